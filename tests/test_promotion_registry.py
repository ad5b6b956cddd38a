"""Promotion on a real registry: the champion is rescored on the new version's own test rows, the gate
reads the bootstrap interval of the difference, and two promotions of one model at once cannot both read
the same champion (real MLflow on SQLite, a real tiny adapter trained by the real flow)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from lora_pipeline.config import load_config
from lora_pipeline.evaluation.evaluate import DomainEvaluation
from lora_pipeline.registry import schema
from lora_pipeline.registry.champions import champion_history
from lora_pipeline.registry.register import promote_version
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory, vader_csv, prefect_harness):
    """tweets trained once by the flow (v1, champion)."""
    from flows.retrain import retrain

    root = tmp_path_factory.mktemp("promotion")
    # Only the champion comparison is under test: the base and TF-IDF rules let a tiny adapter through.
    cfg = load_config(overrides=tiny_overrides(root) + [f"data.path={vader_csv}", "data.domains=[tweets]",
                                                        "promotion.min_gain_over_base=-1", "promotion.max_loss_to_tfidf=1",
                                                        "promotion.min_rescored_rows=10"])
    retrain(config=cfg)
    client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    assert str(schema.champion_version(client, "vader-tweets").version) == "1"
    return cfg, client


def _evaluation_of(cfg) -> DomainEvaluation:
    [path] = (cfg.work_dir / "adapters").rglob("evaluation.json")
    return DomainEvaluation(**json.loads(path.read_text()))


def _copy_of(client: MlflowClient, name: str, version: str) -> str:
    """A new pending version holding the same adapter as ``version`` (same weights, same test rows)."""
    source = client.get_model_version(name, version)
    tags = {**source.tags, schema.REGISTRATION: schema.PENDING}
    for key in (schema.PROMOTION_DECISION, schema.PROMOTION_REASON, schema.PREVIOUS_CHAMPION):
        tags.pop(key, None)
    return str(client.create_model_version(name, source.source, run_id=source.run_id, tags=tags).version)


@pytest.mark.fault
def test_two_promotions_at_once_leave_one_champion_and_a_chained_history(project):
    cfg, client = project
    name, evaluation = "vader-tweets", _evaluation_of(cfg)
    versions = [_copy_of(client, name, "1"), _copy_of(client, name, "1")]
    start, decisions, errors = threading.Barrier(2), {}, []

    def run(version: str) -> None:
        try:
            start.wait()  # both read-decide-write sequences begin together
            decisions[version] = promote_version(client, cfg, name, version, evaluation)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    # Each compared itself with the champion of its time, rescored on its own test rows: the same adapter,
    # so the difference is exactly 0 [0, 0] and both are "not worse".
    for version in versions:
        tags = client.get_model_version(name, version).tags
        assert tags[schema.PROMOTION_DECISION] == schema.CHAMPION, tags[schema.PROMOTION_REASON]
        assert tags[schema.champion_rescored("macro_f1")] == tags["adapter_macro_f1"]
        assert "+0.0000 [+0.0000, +0.0000]" in tags[schema.VS_CHAMPION]
        assert schema.VS_PREFIX + "base" in tags and schema.VS_PREFIX + "tfidf" in tags
    # Serialized: the second read the first's champion, not v1 (without the lock both read v1).
    events = [e for e in champion_history(client, name) if e.action == "auto"][-2:]  # the two racing promotions
    assert sorted(e.version for e in events) == versions
    assert [e.previous for e in events] == ["1", events[0].version]
    assert str(client.get_registered_model(name).aliases[schema.CHAMPION]) == events[1].version


def test_texts_the_champion_trained_on_are_left_out_of_the_comparison(project, tmp_path):
    """The new version's test rows may hold texts the champion trained on (a changed domain is split anew):
    those would flatter the champion, so only the rows it never saw are compared."""
    cfg, client = project
    name, evaluation = "vader-tweets", _evaluation_of(cfg)
    own = pd.read_json(Path(evaluation.artifacts_dir) / "predictions.jsonl", lines=True, dtype=False)
    [train_file] = (cfg.work_dir / "prepared").rglob("train.jsonl")
    seen = pd.read_json(train_file, lines=True, dtype=False).head(12)
    mixed = pd.concat([own, seen.assign(**{f"{m}_pred": seen["label"] for m in evaluation.metrics})])
    folder = tmp_path / "evaluation"
    folder.mkdir()
    mixed[own.columns].to_json(folder / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
    decision = promote_version(client, cfg, name, _copy_of(client, name, "1"),
                               dataclasses.replace(evaluation, artifacts_dir=str(folder)))
    assert f", {len(own)} rows)" in decision.reason.split("rescored on the same rows:")[1].split(";")[0]


def test_a_champion_that_cannot_be_rescored_fairly_falls_back_to_its_recorded_figure_and_says_why(project):
    cfg, client = project
    name = "vader-tweets"
    strict = cfg.model_copy(update={"promotion": cfg.promotion.model_copy(update={"min_rescored_rows": 1000})})
    version = _copy_of(client, name, "1")
    decision = promote_version(client, strict, name, version, _evaluation_of(cfg))
    assert "not rescored: only" in decision.reason and "promotion.min_rescored_rows: 1000" in decision.reason
    assert "on its own test split (not rescored)" in decision.reason
    assert schema.VS_CHAMPION not in client.get_model_version(name, version).tags


def test_promotion_metric_accuracy_decides_rescores_and_tags_in_accuracy(project):
    """promotion.metric: accuracy: the rule, the champion's rescoring, the tags and the catalog all read accuracy."""
    from lora_pipeline.registry.catalog import compare_versions

    cfg, client = project
    name, evaluation = "vader-tweets", _evaluation_of(cfg)
    by_accuracy = cfg.model_copy(update={"promotion": cfg.promotion.model_copy(update={"metric": "accuracy"})})
    version = _copy_of(client, name, "1")
    decision = promote_version(client, by_accuracy, name, version, evaluation)
    tags = client.get_model_version(name, version).tags
    accuracy = evaluation.metrics["adapter"]["accuracy"]
    assert decision.reason.split(": ", 1)[1].startswith(f"accuracy {accuracy:.4f} vs zero-shot base")
    assert tags["adapter_accuracy"] == f"{accuracy:.4f}"
    assert tags["tfidf_accuracy"] == f"{evaluation.metrics['tfidf']['accuracy']:.4f}"
    assert tags[schema.PROMOTION_METRIC] == "accuracy"
    assert tags[schema.champion_rescored("accuracy")] == f"{accuracy:.4f}"  # the same adapter on the same rows
    assert "+0.0000 [+0.0000, +0.0000]" in tags[schema.VS_CHAMPION]
    # What a version compared is in its tags (set at registration: v1 by the task's own, macro-F1).
    assert client.get_model_version(name, "1").tags[schema.PROMOTION_METRIC] == "macro_f1"
    table = compare_versions(client, name).set_index("version")
    assert table.loc[1, "metric"] == "macro_f1"
    assert table.loc[1, "adapter"] == round(evaluation.metrics["adapter"]["macro_f1"], 4)


def test_models_compare_on_a_users_file_scores_every_version_on_the_same_rows(project, tmp_path):
    """`models compare tweets --on FILE`: every version on the file's rows, side by side with the champion; rows
    a version trained on are counted. Every version here holds v1's adapter: identical scores, a zero difference."""
    import contextlib
    import io

    from lora_pipeline.cli import main
    from lora_pipeline.registry.comparison import compare_on_file

    cfg, client = project
    [split_dir] = {p.parent for p in (cfg.work_dir / "prepared").rglob("test.jsonl")}
    test, train = (pd.read_json(split_dir / f"{s}.jsonl", lines=True, dtype=False) for s in ("test", "train"))
    traffic = pd.concat([test, train.head(7)]).assign(domain="tweets")  # 7 rows every version trained on
    traffic = pd.concat([traffic, traffic.head(3).assign(domain="amazon")])  # another domain's rows: ignored
    path = tmp_path / "traffic.csv"
    traffic.to_csv(path, index=False)

    table = compare_on_file(client, cfg, "vader-tweets", path)
    versions = schema.versions_of(client, "vader-tweets")
    assert sorted(table["version"]) == sorted(int(v.version) for v in versions)
    assert (table["rows"] == len(test) + 7).all() and (table["seen_rows"] == 7).all()
    assert table["macro_f1"].nunique() == 1  # the same adapter everywhere
    champion = str(schema.champion_version(client, "vader-tweets").version)
    others = table[table["version"].astype(str) != champion]
    assert len(others) and (others["vs_champion"] == f"v{champion}: +0.0000 [+0.0000, +0.0000]").all()
    by_accuracy = cfg.model_copy(update={"promotion": cfg.promotion.model_copy(update={"metric": "accuracy"})})
    assert {"accuracy", "accuracy_interval"} <= set(compare_on_file(client, by_accuracy, "vader-tweets", path))

    overrides = [a for item in tiny_overrides(Path(cfg.runtime.project_dir)) for a in ("--set", item)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["models", "compare", "tweets", "--on", str(path), *overrides]) == 0
    assert "macro_f1_interval" in printed.getvalue() and "vs_champion" in printed.getvalue()

    bad = tmp_path / "bad.csv"
    traffic.assign(label="sarcastic").to_csv(bad, index=False)
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        assert main(["models", "compare", "tweets", "--on", str(bad), *overrides]) == 1
    assert "label 'sarcastic' is not one of vader-tweets" in errors.getvalue()
