"""The retraining flow end to end on a small slice of the built-in data, through the real CLI.

Real Prefect (test harness), real MLflow (SQLite in tmp_path), real all-MiniLM-L6-v2, a few steps.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from lora_pipeline.cli import main
from lora_pipeline.data.prepare import domain_dirname
from lora_pipeline.evaluation.metrics import SCALAR_METRICS
from lora_pipeline.models.bases import get_spec
from lora_pipeline.registry.promotion import decide_promotion
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration

DOMAINS = ("amazon", "tweets")
MAX_MODEL_BYTES = 5 * 1024 * 1024


def _run_cli(project: Path, vader_csv: Path, *extra: str) -> int:
    args = ["run", "--data", str(vader_csv)]
    for item in tiny_overrides(project):
        args += ["--set", item]
    return main(args + list(extra))


def _versions(client: MlflowClient, name: str) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def _expected_alias(client, name, version, margin, champion=None):
    metrics = client.get_run(client.get_model_version(name, version).run_id).data.metrics
    return decide_promotion(metrics["adapter_macro_f1"], metrics["base_macro_f1"], margin, champion_f1=champion,
                            tfidf_f1=metrics["tfidf_macro_f1"]).alias


def test_run_registers_one_adapter_per_domain_then_rebuilds_one(tmp_path, vader_csv, prefect_harness):
    assert _run_cli(tmp_path, vader_csv, "--domains", ",".join(DOMAINS)) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")

    for domain in DOMAINS:
        name = f"vader-{domain}"
        assert _versions(client, name) == ["1"]
        version = client.get_model_version(name, "1")
        run = client.get_run(version.run_id)

        # metrics: every scalar for every model, plus efficiency figures, all finite numbers
        expected_keys = {f"{m}_{s}" for m in ("adapter", "base", "tfidf") for s in SCALAR_METRICS}
        expected_keys |= {"adapter_size_bytes", "train_seconds", "latency_p50_ms", "latency_p95_ms",
                          "throughput_per_s", "trainable_params", "trainable_share"}
        assert expected_keys <= set(run.data.metrics)
        assert 0 <= run.data.metrics["adapter_macro_f1"] <= 1
        assert 0 < run.data.metrics["trainable_share"] < 0.05  # an adapter, not a full fine-tune
        assert run.data.metrics["train_steps"] == 6
        # the LoRA modules the config leaves to the base (null) are logged as the base filled them in
        assert run.data.params["lora.target_modules"] == str(list(get_spec("all-minilm-l6-v2").lora_targets))

        # provenance on the version; the run is nested under the flow's parent run
        for tag in ("data_fingerprint", "domain_fingerprint", "base_model", "config_sha256", "code_version", "seed"):
            assert version.tags[tag], tag
        assert version.tags["base_model"] == "all-minilm-l6-v2"
        assert (version.tags["precision"], version.tags["device"]) == ("fp32", "cpu")  # what the tests pin
        assert run.data.tags["mlflow.parentRunId"]

        # alias set by the rule, the decision and its numbers stored on the version
        alias = _expected_alias(client, name, "1", margin=0.02)
        assert _aliases(client, name) == {alias: "1"}
        assert version.tags["promotion_decision"] == alias
        assert version.tags["adapter_macro_f1"] in version.tags["promotion_reason"]

        # the logged model holds the adapter only (no base weights) and is small
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / domain)))
        files = [p for p in local.rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in files) < MAX_MODEL_BYTES
        assert any(p.name == "adapter_model.safetensors" for p in files)
        assert not any(p.name == "model.safetensors" for p in files)

        # reloaded from the registry, it predicts exactly what the offline evaluation predicted
        offline = pd.read_json(client.download_artifacts(run.info.run_id, "evaluation/predictions.jsonl",
                                                         str(tmp_path)), lines=True, dtype=False)
        served = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(pd.DataFrame({"text": offline["text"]}))
        assert served["label"].tolist() == offline["adapter_pred"].tolist()
        assert served.filter(like="p_").sum(axis=1).round(4).eq(1).all()

    # Rebuild a single domain with another seed: a new version for it alone, alias by the same rule
    amazon_champion = _aliases(client, "vader-amazon").get("champion")
    assert _run_cli(tmp_path, vader_csv, "--domains", "amazon", "--set", "train.seed=7") == 0
    assert _versions(client, "vader-amazon") == ["1", "2"]
    assert _versions(client, "vader-tweets") == ["1"]
    v2 = client.get_model_version("vader-amazon", "2")
    alias = v2.tags["promotion_decision"]
    assert _aliases(client, "vader-amazon").get(alias) == "2"
    earned = _expected_alias(client, "vader-amazon", "2", margin=0.02) == "champion"  # base and TF-IDF rules
    if amazon_champion:  # v1 rescored on v2's test rows (the same rows: the domain's data did not change)
        assert v2.tags["vs_champion"].startswith("v1: ") and v2.tags["champion_rescored_macro_f1"]
        low = float(v2.tags["vs_champion"].split("[")[1].split(",")[0])
        assert (alias == "champion") == (earned and low >= -0.01)  # promotion.max_loss_to_champion
        if alias == "challenger":
            assert _aliases(client, "vader-amazon")["champion"] == "1"
    else:
        assert alias == ("champion" if earned else "challenger")


def test_a_failing_domain_does_not_lose_the_others(tmp_path, vader_csv, prefect_harness, capsys):
    # A real failure, no mocks: tweets' adapter directory cannot be created (a file is in the way).
    blocker = tmp_path / ".lora_pipeline" / "adapters" / domain_dirname("tweets")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")

    assert _run_cli(tmp_path, vader_csv, "--domains", ",".join(DOMAINS)) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: domain 'tweets' train failed:")

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert _versions(client, "vader-amazon") == ["1"]
    assert _versions(client, "vader-tweets") == []
    parent = [r for r in client.search_runs([client.get_experiment_by_name("lora-pipeline").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags]
    assert parent[0].info.status == "FAILED" and parent[0].data.tags["failed_domains"] == "tweets"


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("text,label,domain\nhello,positive,a\n", ["--domains", "zzz"], "unknown domain(s) zzz"),
        ("body,label,domain\nhello,positive,a\n", [], "missing text column 'text'"),
    ],
)
def test_bad_input_stops_before_training_and_registers_nothing(
    tmp_path, prefect_harness, content, extra, message
):
    import contextlib
    import io

    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    stderr = io.StringIO()  # not capsys: see test_faults.py's store test
    with contextlib.redirect_stderr(stderr):
        assert _run_cli(tmp_path, bad, *extra) == 1
    last = stderr.getvalue().strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}:") and message in last
    # The store was checked (it exists now), but prepare failed before any run was opened or anything registered.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert not (tmp_path / ".lora_pipeline" / "adapters").exists()


def test_a_user_file_registers_under_its_own_name_and_a_tfidf_win_is_stated(tmp_path, prefect_harness, capsys):
    """A user's file (not VADER) registers as '<file stem>-<domain>'. Its words give the label away, which
    TF-IDF learns perfectly, while an adapter that cannot move (learning rate ~0) does not: the version
    is held back as challenger, and the console and the version's reason say why."""
    rows = [{"text": f"{word} {filler} number {i}", "label": label, "domain": "shop"}
            for label, word in (("good", "excellent"), ("bad", "awful"))
            for i, filler in enumerate(["works fine", "as expected", "nothing else", "at all"] * 10)]
    data = tmp_path / "Shop Reviews.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    assert _run_cli(tmp_path, data, "--set", "train.learning_rate=1e-9") == 0

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "Shop-Reviews-shop"  # the file's stem, made MLflow-safe
    assert _versions(client, name) == ["1"]
    version = client.get_model_version(name, "1")
    tfidf, adapter = float(version.tags["tfidf_macro_f1"]), float(version.tags["adapter_macro_f1"])
    assert tfidf == 1.0 and adapter < tfidf
    assert version.tags["promotion_decision"] == "challenger"
    assert version.tags["promotion_reason"].startswith(
        f"challenger: TF-IDF beats the adapter on shop (1.00 vs {adapter:.2f})")
    assert _aliases(client, name) == {"challenger": "1"}
    # The run's comparison report (in MLflow, on the pipeline run) says it too.
    [parent] = [r for r in client.search_runs([client.get_experiment_by_name("lora-pipeline").experiment_id])
                if "mlflow.parentRunId" not in r.data.tags]
    report = Path(client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path))).read_text()
    assert f"TF-IDF beats the adapter on shop (1.00 vs {adapter:.2f})" in report



# Last in this module: its timed-out training thread may still log into this test's closed output capture,
# which breaks the console of a CLI run that follows it in the same module.
def test_a_training_task_over_its_timeout_fails_without_retrying(tmp_path, vader_csv, prefect_harness, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    # 4000 steps would take minutes; the 5 s limit must stop it (a timeout is never retried: it would recur).
    assert _run_cli(tmp_path, vader_csv, "--domains", "tweets", "--set", "train.max_steps=4000",
                    "--set", "train.early_stopping_patience=0", "--set", "runtime.train_timeout_s=5") == 1
    assert "domain 'tweets' train failed: TaskRunTimeoutError" in capsys.readouterr().err
    with get_client(sync_client=True) as client:
        [train] = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["train-tweets"])),
                                        sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=1)
    assert train.state.name == "TimedOut" and train.run_count == 1
    assert multiprocessing.active_children() == []  # the training process was killed, not left running
    assert _versions(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "vader-tweets") == []


def _adapter_weights(project: Path) -> dict[str, bytes]:
    return {p.parent.parent.parent.name: p.read_bytes()
            for p in (project / ".lora_pipeline" / "adapters").rglob("adapter/adapter_model.safetensors")}


def test_domains_train_in_their_own_processes_and_identically_whatever_runs_beside_them(
        tmp_path, vader_csv, prefect_harness):
    import os

    weights = {}
    for parallel in (2, 1):
        project = tmp_path / f"parallel-{parallel}"
        project.mkdir()
        assert _run_cli(project, vader_csv, "--domains", ",".join(DOMAINS),
                        "--set", f"runtime.parallel_domains={parallel}") == 0
        weights[parallel] = _adapter_weights(project)
        client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        pids = {client.get_run(client.get_model_version(f"vader-{d}", "1").run_id).data.tags["trained_on"]
                .rsplit(":", 1)[1] for d in DOMAINS}
        assert str(os.getpid()) not in pids and len(pids) == 2  # a fresh process per domain
    assert len(weights[2]) == len(DOMAINS)
    assert weights[2] == weights[1]  # bit-identical: no shared random generator, no shared state
