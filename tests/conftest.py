"""Shared fixtures: real Prefect (test harness), real MLflow (SQLite in a temp dir), real base model.

PREFECT_HOME must point at a temp dir before prefect is first imported, so it is set at import time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from lora_pipeline.config import apply_runtime_env, load_config

apply_runtime_env()
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests always use their own temp store

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_tracking_uri_leaks(monkeypatch):
    """Each test starts without MLFLOW_TRACKING_URI and leaves none behind (mlflow.set_tracking_uri exports it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def vader_csv() -> Path:
    """The built-in dataset (make test fetches it first; fetched here if missing)."""
    from lora_pipeline.data.datasets import fetch_vader

    return fetch_vader(REPO_ROOT / "data" / "vader.csv")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def tiny_overrides(project_dir: Path) -> list[str]:
    """A few rows and steps per domain: enough to exercise every stage for real on 2 CPU cores."""
    return [
        f"runtime.project_dir={project_dir}",
        "split.max_train_rows=48",
        "split.max_val_rows=24",
        "split.max_test_rows=30",
        "train.max_steps=6",
        "train.batch_size=8",
        "train.learning_rate=0.002",
        "eval.latency_samples=3",
        # Served vs offline probabilities are compared to 1e-5: exact only in fp32 (bf16 rounding depends on
        # the batch's padding). bf16 has its own tests (test_compute.py).
        "runtime.precision=fp32",
    ]


@pytest.fixture
def tiny_config(tmp_path, vader_csv):
    return load_config(overrides=tiny_overrides(tmp_path) + [f"data.path={vader_csv}"])


def pytest_terminal_summary(terminalreporter):
    """The fault-injection suite's figure: how many faults were tried and how many the product handled."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "") == "call" and "fault" in r.keywords]
    if reports:
        handled = sum(r.passed for r in reports)
        terminalreporter.write_line(f"fault injection: {len(reports)} faults tried, {handled} handled")
