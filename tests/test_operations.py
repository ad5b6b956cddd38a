"""Operations on one project, in the order a user meets them: a first run, a no-change re-run (cache hits),
a single-domain rebuild through the served 'rebuild' deployment, promote/rollback, and the two UIs.

Real Prefect (test harness API, a real `lora-pipeline deploy` process), real MLflow (SQLite in a temp dir),
real all-MiniLM-L6-v2 on a few rows and steps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from lora_pipeline.cli import main
from lora_pipeline.data.prepare import domain_dirname
from lora_pipeline.config import load_config
from tests.conftest import REPO_ROOT, tiny_overrides

pytestmark = pytest.mark.integration
DOMAINS = ["amazon", "tweets"]


def _set_args(project: Path) -> list[str]:
    """The tiny config for ``project`` as CLI arguments (--set k=v ...)."""
    return [x for item in tiny_overrides(project) + [f"data.path={project / 'data.csv'}", "data.name=vader"]
            for x in ("--set", item)]


def _cli(project: Path, *args: str) -> int:
    return main([*args, *_set_args(project)])


def _versions(client: MlflowClient, name: str) -> dict[str, int]:
    """version -> last_updated_timestamp."""
    return {str(v.version): v.last_updated_timestamp for v in client.search_model_versions(f"name='{name}'")}


def _domain_runs(client: MlflowClient, domain: str) -> int:
    experiment = client.get_experiment_by_name("lora-pipeline")
    return len(client.search_runs([experiment.experiment_id], filter_string=f"tags.domain = '{domain}'"))


@pytest.fixture(scope="module")
def project(tmp_path_factory, vader_csv, prefect_harness) -> Path:
    """Two domains of the built-in data, trained and registered once (v1 each)."""
    root = tmp_path_factory.mktemp("project")
    data = pd.read_csv(vader_csv, dtype=str, keep_default_na=False)
    data[data["domain"].isin(DOMAINS)].to_csv(root / "data.csv", index=False)
    assert _cli(root, "run") == 0
    return root


@pytest.fixture
def registry(project) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def test_no_change_rerun_hits_the_cache_and_registers_nothing(project, registry):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter,
                                                TaskRunFilterFlowRunId)

    from flows.retrain import retrain

    before = {d: _versions(registry, f"vader-{d}") for d in DOMAINS}
    cfg = load_config(overrides=tiny_overrides(project) + [f"data.path={project / 'data.csv'}", "data.name=vader"])
    state = retrain(config=cfg, return_state=True)

    assert state.is_completed()
    assert [row["status"] for row in state.result()] == ["unchanged (cached)"] * 2
    assert {d: _versions(registry, f"vader-{d}") for d in DOMAINS} == before  # no new version, none touched
    with get_client(sync_client=True) as client:
        [subflow] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[subflow.id])))
    states = {t.name: t.state.name for t in tasks}
    for domain in DOMAINS:
        assert states[f"train-{domain}"] == "Cached"
        assert states[f"evaluate-{domain}"] == "Cached"
    # The re-run's MLflow run names the runs that trained its (cached) domains, and got its report.
    [report_task] = [t for t in tasks if t.name.startswith("report-run")]
    assert report_task.state.name == "Completed"
    [rerun] = [r for r in _parent_runs(registry) if r.data.tags.get(f"domain_run/{domain_dirname('amazon')}")][:1]
    for domain in DOMAINS:
        [v1] = [v for v in registry.search_model_versions(f"name='vader-{domain}'") if str(v.version) == "1"]
        assert rerun.data.tags[f"domain_run/{domain_dirname(domain)}"] == v1.run_id
    assert {"report/report.md", "report/report.html"} <= {a.path for a in registry.list_artifacts(rerun.info.run_id, "report")}

    # Asked for explicitly, a rebuild of an unchanged domain retrains and registers it anyway.
    [row] = retrain(config=cfg, domains=["tweets"], refresh=True)
    assert row["status"] == "registered" and row["version"] == str(len(before["tweets"]) + 1)
    assert _versions(registry, "vader-amazon") == before["amazon"]


def _parent_runs(client: MlflowClient) -> list:
    """Pipeline (parent) runs, newest first."""
    experiment = client.get_experiment_by_name("lora-pipeline")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _table_row(markdown: str, section: str, first_cell: str) -> list[str]:
    """The cells of the row starting with ``first_cell`` in the first table after heading ``section``."""
    after = markdown.split(f"## {section}\n", 1)[1]
    for line in after.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row '{first_cell}' under '{section}'")


def test_report_renders_a_run_from_mlflow_and_publishes_it(project, registry, tmp_path, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    first = _parent_runs(registry)[-1]  # the fixture's run: both domains trained
    out = tmp_path / "report"
    assert _cli(project, "report", "--run-id", first.info.run_id, "--out", str(out)) == 0

    markdown = (out / "report.md").read_text()
    for domain in DOMAINS:
        [v1] = [v for v in registry.search_model_versions(f"name='vader-{domain}'") if str(v.version) == "1"]
        metrics = registry.get_run(v1.run_id).data.metrics
        # columns: domain, zero-shot base, TF-IDF+LR, LoRA adapter, adapter - base
        row = _table_row(markdown, "macro_f1", domain)
        assert row[1:4] == [f"{metrics[f'{m}_macro_f1']:.3f}" for m in ("base", "tfidf", "adapter")]
        assert row[4] == f"{metrics['adapter_macro_f1'] - metrics['base_macro_f1']:+.3f}"
        assert _table_row(markdown, "accuracy", domain)[3] == f"{metrics['adapter_accuracy']:.3f}"
        for model in ("base", "tfidf", "adapter"):
            assert (out / f"confusion_{domain_dirname(domain)}_{model}.png").stat().st_size > 1000
            assert f"(confusion_{domain_dirname(domain)}_{model}.png)" in markdown
    assert "(quality_macro_f1.png)" in markdown and (out / "quality_macro_f1.png").stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + 3 * len(DOMAINS)  # self-contained: chart + matrices

    logged = {a.path for a in registry.list_artifacts(first.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/quality_macro_f1.png"} <= logged
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["comparison-report"])))
    assert any(first.info.run_id in (a.description or "") and "| amazon |" in a.data for a in artifacts)

    # Wrong ids: one line naming the problem.
    capsys.readouterr()
    assert _cli(project, "report", "--run-id", "0" * 32) == 1
    assert "not found" in capsys.readouterr().err
    child = registry.get_run(registry.get_model_version("vader-amazon", "1").run_id)
    assert _cli(project, "report", "--run-id", child.info.run_id) == 1
    assert f"report its pipeline run {first.info.run_id}" in capsys.readouterr().err


def _wait_for_deployment(client, name: str, server: subprocess.Popen, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`lora-pipeline deploy` exited {server.returncode}:\n{server.stdout.read()[-3000:]}")
        try:
            return client.read_deployment_by_name(name)
        except Exception:  # not registered yet
            time.sleep(1)
    pytest.fail(f"deployment {name} did not appear within {timeout_s} s")


def test_rebuild_deployment_retrains_only_the_named_domain(project, registry):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    # amazon's rows change (30 fewer); tweets' do not
    data = pd.read_csv(project / "data.csv", dtype=str, keep_default_na=False)
    data.drop(data.index[data["domain"] == "amazon"][:30]).to_csv(project / "data.csv", index=False)
    before = {d: _versions(registry, f"vader-{d}") for d in DOMAINS}
    tweets_runs = _domain_runs(registry, "tweets")

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server = subprocess.Popen([sys.executable, "-m", "lora_pipeline.cli", "deploy", *_set_args(project)], env=env,
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with get_client(sync_client=True) as client:
            nightly = _wait_for_deployment(client, "retrain/nightly", server)
            _wait_for_deployment(client, "retrain/rebuild", server)
        assert nightly.schedules[0].schedule.cron == load_config().schedule.cron

        flow_run = run_deployment("retrain/rebuild", parameters={"domains": ["amazon"]}, timeout=600, poll_interval=2)
        assert flow_run.state.is_completed(), flow_run.state
    finally:
        server.terminate()
        server.wait(timeout=60)

    after = {d: _versions(registry, f"vader-{d}") for d in DOMAINS}
    assert sorted(after["amazon"]) == sorted([*before["amazon"], str(len(before["amazon"]) + 1)])
    assert after["tweets"] == before["tweets"]  # not re-registered, not even touched
    assert _domain_runs(registry, "tweets") == tweets_runs


def test_promote_and_rollback_keep_an_audit_trail(project, registry, capsys):
    name = "vader-amazon"
    assert len(_versions(registry, name)) >= 2  # v1 from the first run, v2 from the rebuild

    assert _cli(project, "models", "promote", "amazon", "1", "--reason", "baseline") == 0
    assert _cli(project, "models", "promote", "amazon", "2") == 0
    assert str(registry.get_registered_model(name).aliases["champion"]) == "2"
    assert _cli(project, "models", "rollback", "amazon") == 0
    assert str(registry.get_registered_model(name).aliases["champion"]) == "1"

    tags = registry.get_registered_model(name).tags
    history = [json.loads(tags[k]) for k in sorted(tags) if k.startswith("champion_history/")]
    assert [(e["action"], e["version"], e["previous"]) for e in history[-3:]] == [
        ("promote", "1", history[-3]["previous"]), ("promote", "2", "1"), ("rollback", "1", "2")]
    assert history[-3]["reason"] == "baseline"

    capsys.readouterr()
    assert _cli(project, "models", "list") == 0
    listing = capsys.readouterr().out
    assert "vader-amazon" in listing and "champion=v1" in listing and "vader-tweets" in listing
    assert _cli(project, "models", "compare", "amazon") == 0
    compared = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in compared[2:]] == ["2", "1"]  # newest first, one row per version

    assert _cli(project, "models", "promote", "amazon", "99") == 1
    assert "has no version 99" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_servers_show_runs_started_after_them_and_stop_cleanly(project):
    from lora_pipeline.ops.servers import _running, start_servers, stop_servers

    cfg = load_config(overrides=tiny_overrides(project) + [f"data.path={project / 'data.csv'}", "data.name=vader",
                                                          f"servers.prefect_port={_free_port()}",
                                                          f"servers.mlflow_port={_free_port()}"])
    servers = {s.name: s for s in start_servers(cfg)}
    try:
        started_ms = int(time.time() * 1000)
        # A user's next run, in a fresh process that knows nothing but the project directory.
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
        done = subprocess.run([sys.executable, "-m", "lora_pipeline.cli", "run", *_set_args(project)], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

        request = urllib.request.Request(f"{servers['prefect'].url}/api/flow_runs/filter", data=b"{}",
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            flow_runs = json.load(response)
        assert any(r["state_type"] == "COMPLETED" and r["name"] for r in flow_runs)
        mlflow_ui = MlflowClient(servers["mlflow"].url)
        experiment = mlflow_ui.get_experiment_by_name("lora-pipeline")
        assert any(r.info.start_time >= started_ms for r in mlflow_ui.search_runs([experiment.experiment_id]))
    finally:
        stopped = stop_servers(cfg)

    assert sorted(s.name for s in stopped) == ["mlflow", "prefect"]
    assert not any(_running(s) for s in servers.values())
    assert "PREFECT_API_URL" not in (cfg.prefect_home / "profiles.toml").read_text()
