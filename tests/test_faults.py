"""Fault injection: each case breaks something for real and asserts the product stays consistent.

Real Prefect (test harness), real MLflow (SQLite in tmp), real all-MiniLM-L6-v2 on a tiny slice. Kills are
real: a subprocess runs the CLI and SIGKILLs itself at the chosen point. The terminal summary prints
"fault injection: N faults tried, N handled" (tests/conftest.py). API faults are in tests/test_serving.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from lora_pipeline.cli import main
from lora_pipeline.config import load_config
from lora_pipeline.errors import AdapterLoadError
from lora_pipeline.models.adapters import CHECKSUMS, load_adapter
from lora_pipeline.registry import schema
from lora_pipeline.registry.champions import promote
from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.fault]

TINY = ["--set", "train.max_steps=3", "--set", "eval.latency_samples=1"]

# Run by a subprocess: the real CLI, with one call replaced by "do it, then die" (SIGKILL: no cleanup runs).
KILLER = textwrap.dedent("""
    import os, signal, sys, threading, time
    point = sys.argv[1]
    if point == "after-register-model":
        import mlflow
        real = mlflow.register_model
        def register_then_die(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        mlflow.register_model = register_then_die
    elif point == "during-training":
        import tasks.pipeline
        real = tasks.pipeline.train_in_own_process
        def train_then_die(*args, **kwargs):
            threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGKILL)).start()
            return real(*args, **kwargs)
        tasks.pipeline.train_in_own_process = train_then_die
    from lora_pipeline.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _cli_args(project: Path, data: Path, *extra: str) -> list[str]:
    args = ["run", "--data", str(data)]
    for item in tiny_overrides(project):
        args += ["--set", item]
    return args + TINY + list(extra)


def _client(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def _run_states(client: MlflowClient) -> list[str]:
    experiment = client.get_experiment_by_name("lora-pipeline")
    return [r.info.status for r in client.search_runs([experiment.experiment_id])] if experiment else []


def _assert_consistent(client: MlflowClient, name: str) -> None:
    """Every version complete with a decision; the champion (if any) is one of them; no run left RUNNING."""
    versions = schema.versions_of(client, name)
    assert versions and all(schema.is_complete(v) and v.tags[schema.PROMOTION_DECISION] for v in versions)
    aliases = client.get_registered_model(name).aliases
    assert set(aliases) <= {schema.CHAMPION, schema.CHALLENGER} and aliases
    assert "RUNNING" not in _run_states(client)


@pytest.fixture
def prefect_api_env(prefect_harness) -> dict[str, str]:
    """The environment for a CLI subprocess that reports to this session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path.cwd())}


@pytest.mark.parametrize("point", ["after-register-model", "during-training"])
def test_a_run_killed_at_a_chosen_point_is_repaired_by_the_next_run(point, tmp_path, vader_csv, prefect_api_env):
    args = _cli_args(tmp_path, vader_csv, "--domains", "tweets")
    killed = subprocess.run([sys.executable, "-c", KILLER, point, *args], env=prefect_api_env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = _client(tmp_path)
    assert "RUNNING" in _run_states(client)  # what the kill left behind
    if point == "after-register-model":  # a version without decision or alias: never served, never "cached"
        [half] = schema.versions_of(client, "vader-tweets")
        assert not schema.is_complete(half) and not client.get_registered_model("vader-tweets").aliases

    assert main(args) == 0
    _assert_consistent(client, "vader-tweets")
    killed_runs = [s for s in _run_states(client) if s == "KILLED"]
    assert killed_runs  # the dead process's runs, marked by the next run


def test_deleted_adapters_are_retrained_not_read_from_the_cache(tmp_path, vader_csv, prefect_harness):
    args = _cli_args(tmp_path, vader_csv, "--domains", "tweets")
    assert main(args) == 0
    import shutil

    shutil.rmtree(tmp_path / ".lora_pipeline" / "adapters")
    assert main(args + ["--set", "eval.latency_samples=2"]) == 0  # an evaluation-only change: was FileNotFoundError
    assert list((tmp_path / ".lora_pipeline" / "adapters").rglob("adapter_model.safetensors"))
    _assert_consistent(_client(tmp_path), "vader-tweets")


def test_hostile_domain_names_stay_inside_the_project_and_apart(tmp_path, vader_csv, prefect_harness):
    rows = pd.read_csv(vader_csv)
    rows = rows[rows["domain"] == "tweets"].head(90)
    hostile = ["../../../escaped", "a/b", "a b", "日本"]
    data = tmp_path / "hostile.csv"
    pd.concat([rows.assign(domain=d) for d in hostile]).to_csv(data, index=False)
    project = tmp_path / "project"
    project.mkdir()

    assert main(_cli_args(project, data)) == 0
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.parent.glob("escaped*"))
    outside = [p for p in tmp_path.rglob("*") if project not in p.parents and p not in (project, data)]
    assert outside == []  # every file the run wrote is under the project
    client = _client(project)
    names = {schema.registered_name("hostile", d, "all-minilm-l6-v2") for d in hostile}
    assert len(names) == len(hostile)  # four domains, four models ('a/b' and 'a b' are not merged)
    for domain in hostile:
        name = schema.registered_name("hostile", domain, "all-minilm-l6-v2")
        assert client.get_registered_model(name).tags[schema.DOMAIN] == domain
        _assert_consistent(client, name)


@pytest.fixture
def registered_project(tmp_path, vader_csv, prefect_harness) -> Path:
    """Two domains registered; both v1 made champion by hand (a 3-step adapter rarely earns it)."""
    assert main(_cli_args(tmp_path, vader_csv, "--domains", "tweets,amazon")) == 0
    for name in ("vader-tweets", "vader-amazon"):
        promote(_client(tmp_path), name, "1", "fault test")
    return tmp_path


def _champion_weights(project: Path, name: str) -> Path:
    client = _client(project)
    version = client.get_model_version_by_alias(name, schema.CHAMPION)
    uri = client.get_model_version_download_uri(name, version.version)
    [weights] = Path(uri.removeprefix("file://")).rglob("adapter_model.safetensors")
    return weights


def _overwrite_block(path: Path, offset: int = 4096, size: int = 65536) -> None:
    """64 KB of the file overwritten in place: same size, same name, different bytes."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(min(size, path.stat().st_size - offset)))


def test_corrupted_weights_in_the_registry_are_refused_and_others_still_served(registered_project):
    from lora_pipeline.serving.service import ChampionService

    project = registered_project
    _overwrite_block(_champion_weights(project, "vader-tweets"))

    cfg = load_config(overrides=tiny_overrides(project))
    service = ChampionService(cfg)
    report = service.reload()
    assert report.loaded == ["vader-amazon v1"]  # the intact domain is served
    assert "does not match its sha256" in report.failed[0] and str(project) not in report.failed[0]
    assert [p.domain for p in service.predict([("amazon", "fine")])] == ["amazon"]
    with pytest.raises(AdapterLoadError, match="does not match its sha256"):  # the pyfunc refuses it too
        mlflow.set_tracking_uri(cfg.tracking_uri)
        mlflow.pyfunc.load_model("models:/vader-tweets@champion")


def test_a_corrupted_local_copy_is_fetched_again(registered_project):
    from lora_pipeline.serving.service import ChampionService

    cfg = load_config(overrides=tiny_overrides(registered_project))
    name, version = "vader-tweets", "1"
    first = ChampionService(cfg)
    adapter_dir = first.fetch_adapter(name, version)
    _overwrite_block(adapter_dir / "adapter_model.safetensors")
    (adapter_dir / CHECKSUMS).write_text("{}")  # even a rewritten manifest: the registered digest decides

    service = ChampionService(cfg)
    report = service.reload()
    assert f"{name} v{version}" in report.loaded and report.failed == []
    load_adapter(service.fetch_adapter(name, version))  # the fresh copy verifies


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _read_only_store(tmp: Path) -> str:
    """An existing store opened read-only (SQLite's own mode: file permissions do not stop root, CI's user)."""
    MlflowClient(f"sqlite:///{tmp / 'ro.db'}").search_experiments()  # creates the tables
    return f"sqlite:///file:{tmp / 'ro.db'}?mode=ro&uri=true"


# A tracking store that cannot be used: (case, tracking URI under tmp_path, what the one line says).
STORE_FAULTS = [
    ("server down", lambda tmp: f"http://127.0.0.1:{_closed_port()}", "cannot be used"),
    ("folder missing", lambda tmp: f"sqlite:///{tmp / 'no' / 'such' / 'mlflow.db'}", "is not a writable folder"),
    ("folder is a file", lambda tmp: f"sqlite:///{tmp / 'a-file' / 'mlflow.db'}", "is not a writable folder"),
    ("read-only", _read_only_store, "readonly database"),
]


@pytest.mark.parametrize("case, uri, says", STORE_FAULTS, ids=[c[0] for c in STORE_FAULTS])
def test_a_tracking_store_that_cannot_be_used_stops_the_run_before_any_work(case, uri, says, tmp_path, vader_csv,
                                                                            prefect_harness, monkeypatch):
    import contextlib
    import io
    import time

    # MLflow creates the parent folder of a sqlite:///file:...?uri=true path relative to the working directory
    # ("file:/tmp/..."): keep it inside tmp_path, not in the checkout.
    monkeypatch.chdir(tmp_path)

    (tmp_path / "a-file").write_text("not a folder")
    args = _cli_args(tmp_path, vader_csv, "--domains", "tweets", "--set", f"tracking.tracking_uri={uri(tmp_path)}")
    started = time.monotonic()
    # Not capsys: a console handler Prefect sets up during this test would keep capsys's stream after the test
    # closes it, and every later log record would fail on the closed file.
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(args) == 1
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0] and "tracking store" in errors[0], errors
    assert time.monotonic() - started < 120  # not MLflow's retries inside Prefect's retries (was ~13 min)
    assert not (tmp_path / ".lora_pipeline" / "prepared").exists()  # stopped before preparing anything
    log_file = tmp_path / ".lora_pipeline" / "logs" / "lora-pipeline.log"
    assert "Traceback" in log_file.read_text()  # the details are in the log, not on the console


def test_the_console_shows_progress_lines_and_one_error_line_and_the_log_has_the_rest(tmp_path, vader_csv,
                                                                                      prefect_api_env):
    """A real CLI process: a tiny training run prints progress lines and no library chatter; a bad file ends
    in one error line; the tracebacks and the libraries' output are in the log files."""
    env = {**prefect_api_env, "COLUMNS": "200"}
    trained = subprocess.run([sys.executable, "-m", "lora_pipeline.cli",
                              *_cli_args(tmp_path, vader_csv, "--domains", "tweets")],
                             env=env, capture_output=True, text=True, timeout=600)
    console = trained.stdout + trained.stderr
    assert trained.returncode == 0, console[-3000:]
    assert "train tweets: step" in console and "val macro_f1" in console  # one progress line per logged step
    for chatter in ("LOAD REPORT", "it/s]", "s/it]", "FutureWarning", "warnings.warn", "Traceback", "{'loss'"):
        assert chatter not in console, chatter
    adapter_logs = list((tmp_path / ".lora_pipeline" / "adapters").rglob("train.log"))
    assert adapter_logs and "LOAD REPORT" in adapter_logs[0].read_text()  # the library's output, kept

    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nonly one row,pos\n")
    failed = subprocess.run([sys.executable, "-m", "lora_pipeline.cli", "run", "--data", str(bad),
                             "--set", f"runtime.project_dir={tmp_path}"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stdout + failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: domain 'all' has 1 rows")
    assert "Traceback" in (tmp_path / ".lora_pipeline" / "logs" / "lora-pipeline.log").read_text()
