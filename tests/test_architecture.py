"""The structure the code promises: kinds registered in one place, no import cycles, a server that
never loads the training or evaluation code."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "lora_pipeline"


def test_the_kind_is_named_only_where_kinds_are_registered():
    """What differs between kinds lives in their modules: nothing else tests which kind it is."""
    allowed = {PACKAGE / "models" / "bases.py", PACKAGE / "models" / "causal_scorer.py",
               PACKAGE / "models" / "encoder.py"}
    found = {p for p in PACKAGE.rglob("*.py") for kind in ('"causal"', '"encoder"') if kind in p.read_text()}
    assert found <= allowed, sorted(str(p.relative_to(REPO_ROOT)) for p in found - allowed)


def _modules_after(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_server_process_imports_no_training_or_evaluation_code():
    modules = _modules_after(
        "from lora_pipeline.config import apply_runtime_env, load_config; apply_runtime_env()\n"
        "from lora_pipeline.serving.api import create_app\n"
        "create_app(load_config())")
    ours = [m for m in modules if m.startswith("lora_pipeline")]
    assert "lora_pipeline.serving.api" in ours
    for stage in ("lora_pipeline.training", "lora_pipeline.evaluation", "lora_pipeline.registry.tracking",
                  "lora_pipeline.registry.register", "lora_pipeline.reporting"):
        assert not [m for m in ours if m == stage or m.startswith(stage + ".")], stage
    assert "transformers.trainer" not in modules and "prefect" not in modules


def test_every_package_imports_on_its_own_without_cycles():
    """Each module, imported first in a fresh interpreter, imports (a cycle would fail one of them)."""
    names = sorted(".".join(p.relative_to(REPO_ROOT).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
                   if p.name not in ("__init__.py", "pyfunc_entry.py"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n" \
           "    for m in [k for k in sys.modules if k.startswith('lora_pipeline')]: del sys.modules[m]\n" \
           "    importlib.import_module(name)\nprint('ok')"
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
