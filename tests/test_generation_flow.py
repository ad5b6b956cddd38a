"""task: generate end to end, through the real CLI: ACLSum (its official splits kept) on the real SmolLM2-135M,
a few rows and steps per aspect; real Prefect (test harness), real MLflow (SQLite in tmp_path). The registered
version carries ROUGE metrics and a promotion decision on ROUGE-L, and the server writes with it (POST /generate)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from lora_pipeline.cli import main
from lora_pipeline.config import load_config
from lora_pipeline.data.datasets import fetch_dataset
from lora_pipeline.evaluation.generation import rouge_rows
from lora_pipeline.serving.api import create_app
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

NAME = "aclsum-outcome-smollm2-135m"


def _settings(project: Path) -> list[str]:
    return [f"runtime.project_dir={project}", "runtime.precision=fp32", "split.max_train_rows=8",
            "split.max_val_rows=4", "split.max_test_rows=4", "train.max_steps=2", "train.batch_size=4",
            "base.max_length=64", "generation.max_new_tokens=8", "eval.latency_samples=1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    project = tmp_path_factory.mktemp("generate")
    data = fetch_dataset("aclsum", REPO_ROOT / "data" / "aclsum.csv")
    args = ["run", "--data", str(data), "--task", "generate", "--domains", "outcome"]
    for item in _settings(project):
        args += ["--set", item]
    assert main(args) == 0
    return project


def test_a_generation_run_registers_rouge_metrics_and_a_rouge_l_decision(project):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [version] = client.search_model_versions(f"name='{NAME}'")
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    for model in ("adapter", "base", "fewshot", "lead"):
        for metric in ("rouge1", "rouge2", "rougeL", "mean_output_words"):
            assert 0 <= metrics[f"{model}_{metric}"] <= (1 if metric != "mean_output_words" else 100), (model, metric)
    assert metrics["tokens_per_s"] > 0 and metrics["ms_per_token"] > 0 and metrics["n_test"] == 4
    assert "best_val_macro_f1" not in metrics and run.data.params["task"] == "generate"
    tags = version.tags
    assert tags["adapter_rougeL"] == f"{metrics['adapter_rougeL']:.4f}" and tags["lead_rougeL"]
    assert f"ROUGE-L {metrics['adapter_rougeL']:.4f} vs zero-shot base {metrics['base_rougeL']:.4f}" in tags["promotion_reason"]
    assert tags["promotion_decision"] == ("champion" if metrics["adapter_rougeL"] >= max(
        metrics["base_rougeL"] + 0.02, metrics["lead_rougeL"]) else "challenger")
    assert "vs_lead" in tags and "vs_fewshot" in tags
    # The test split is ACLSum's own: every test text is one of its official test abstracts.
    official = pd.read_csv(REPO_ROOT / "data" / "aclsum.csv")
    official_test = set(official[(official["split"] == "test") & (official["domain"] == "outcome")]["text"])
    local = Path(client.download_artifacts(run.info.run_id, "evaluation/predictions.jsonl", str(project)))
    predictions = pd.read_json(local, lines=True, dtype=False)
    assert set(predictions["text"]) <= official_test
    # The logged ROUGE-L is the mean of the rows' own scores.
    rows = rouge_rows(predictions["target"].tolist(), predictions["adapter_pred"].astype(str).tolist())
    assert metrics["adapter_rougeL"] == pytest.approx(sum(rows) / len(rows), abs=1e-6)
    import mlflow

    model_files = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(project / "model"),
                                                            tracking_uri=f"sqlite:///{project / 'mlflow.db'}"))
    signature = (model_files / "MLmodel").read_text()
    assert "pyfunc_generator_entry.py" in signature and '"name": "output"' in signature  # text -> output
    # ... and, loaded as any MLflow model, it writes what the evaluation wrote (greedy, its own length)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    written = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(predictions[["text"]].head(2))
    assert written["output"].tolist() == predictions["adapter_pred"].head(2).tolist()


def test_the_server_writes_with_the_registered_generation_adapter(project):
    cfg = load_config(overrides=[*_settings(project), "task=generate", "data.name=aclsum", "api.poll_interval_s=0"])
    client = MlflowClient(cfg.tracking_uri)
    version = client.get_registered_model(NAME).aliases
    if "champion" not in version:  # a tiny adapter may not earn it; serving serves champions only
        client.set_registered_model_alias(NAME, "champion", "1")
    predictions = pd.read_json(next((project / ".lora_pipeline").rglob("predictions.jsonl")), lines=True, dtype=False)
    text = predictions["text"].iloc[0]
    with TestClient(create_app(cfg)) as http:
        listed = http.get("/adapters").json()["adapters"]
        assert [(a["domain"], a["task"]) for a in listed] == [("outcome", "generate")]
        one = http.post("/generate", json={"domain": "outcome", "text": text})
        assert one.status_code == 200, one.text
        [out] = one.json()["outputs"]
        # greedy, the adapter's own length: what the offline evaluation wrote for this text
        assert out["output"] == predictions["adapter_pred"].iloc[0] and out["model"] == NAME
        items = http.post("/generate", json={"items": [{"domain": "outcome", "text": text}] * 2, "max_new_tokens": 2})
        assert items.status_code == 200 and len(items.json()["outputs"]) == 2
        assert http.post("/predict", json={"domain": "outcome", "texts": [text]}).status_code == 400
        too_long = http.post("/generate", json={"domain": "outcome", "text": text, "max_new_tokens": 100000})
        assert too_long.status_code == 422 and "max_new_tokens" in str(too_long.json())
        assert http.post("/generate", json={"domain": "nope", "text": text}).status_code == 404


def test_models_compare_on_a_file_scores_a_generation_model_with_rouge(project, tmp_path):
    from lora_pipeline.registry.comparison import compare_on_file

    cfg = load_config(overrides=[*_settings(project), "task=generate", "data.name=aclsum"])
    predictions = pd.read_json(next((project / ".lora_pipeline").rglob("predictions.jsonl")), lines=True, dtype=False)
    path = tmp_path / "traffic.csv"
    predictions[["text", "target"]].head(3).to_csv(path, index=False)  # no domain column: every row counts
    table = compare_on_file(MlflowClient(cfg.tracking_uri), cfg, NAME, path)
    [row] = table.to_dict("records")
    rows = rouge_rows(predictions["target"].head(3).tolist(), predictions["adapter_pred"].head(3).astype(str).tolist())
    assert row["rows"] == 3 and row["seen_rows"] == 0 and "accuracy" not in row
    assert row["rougeL"] == pytest.approx(round(sum(rows) / 3, 4), abs=1e-4)  # the same greedy outputs


def test_one_server_holds_a_classification_dataset_and_a_generation_dataset_on_one_base(project, vader_csv):
    """api.datasets: [vader, aclsum] on SmolLM2: a classifier (tweets) and a writer (outcome) in one server, one
    base in memory; a third dataset with a domain already taken is reported, not loaded."""
    args = ["run", "--data", str(vader_csv), "--domains", "tweets", "--set", "base.name=smollm2-135m",
            "--set", "promotion.min_gain_over_base=-1", "--set", "promotion.max_loss_to_tfidf=1"]
    for item in _settings(project):
        args += ["--set", item]
    assert main(args) == 0
    cfg = load_config(overrides=[*_settings(project), "base.name=smollm2-135m", "api.poll_interval_s=0",
                                 "api.datasets=[vader, aclsum, papers]"])
    client = MlflowClient(cfg.tracking_uri)
    if "champion" not in client.get_registered_model(NAME).aliases:
        client.set_registered_model_alias(NAME, "champion", "1")
    # Another dataset with an 'outcome' domain on the same base: listed after aclsum, so not served.
    source = client.get_model_version(NAME, "1")
    client.create_registered_model("papers-outcome-smollm2-135m", tags={
        **client.get_registered_model(NAME).tags, "dataset": "papers"})
    client.create_model_version("papers-outcome-smollm2-135m", source.source, run_id=source.run_id, tags=source.tags)
    client.set_registered_model_alias("papers-outcome-smollm2-135m", "champion", "1")

    predictions = pd.read_json(next((project / ".lora_pipeline").rglob("predictions.jsonl")), lines=True, dtype=False)
    with TestClient(create_app(cfg)) as http:
        listed = http.get("/adapters").json()
        assert listed["datasets"] == ["vader", "aclsum", "papers"]
        assert {(a["domain"], a["model"], a["task"]) for a in listed["adapters"]} == {
            ("outcome", NAME, "generate"), ("tweets", "vader-tweets-smollm2-135m", "classify")}
        classified = http.post("/predict", json={"domain": "tweets", "texts": ["I love it", "I hate it"]})
        assert classified.status_code == 200, classified.text
        assert {p["label"] for p in classified.json()["predictions"]} <= {"negative", "neutral", "positive"}
        written = http.post("/generate", json={"domain": "outcome", "text": predictions["text"].iloc[0]})
        assert written.status_code == 200 and written.json()["outputs"][0]["output"] == predictions["adapter_pred"].iloc[0]
        [skipped] = http.post("/reload").json()["skipped"]
        assert skipped.startswith("papers-outcome-smollm2-135m v1: not loaded, domain 'outcome' is served by " + NAME)
        # aclsum's outcome loses its champion: the next dataset's (also a v1) takes the domain over.
        client.delete_registered_model_alias(NAME, "champion")
        reloaded = http.post("/reload").json()
        assert reloaded["loaded"] == ["papers-outcome-smollm2-135m v1"] and reloaded["skipped"] == []
        assert {a["model"] for a in http.get("/adapters").json()["adapters"]} == {
            "papers-outcome-smollm2-135m", "vader-tweets-smollm2-135m"}
