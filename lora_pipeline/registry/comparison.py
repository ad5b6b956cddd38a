"""Every version of one domain scored on a labelled file the user brings: ``lora-pipeline models compare DOMAIN
--on FILE``. A check on the user's own traffic before (or after) a promotion, on identical rows for every version.

Each version is loaded as the server loads it (downloaded from the registry, files checked against the registered
digest). Rows a version trained or validated on are counted (``seen_rows``): its score on them is not a test.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from lora_pipeline.config import PipelineConfig
from lora_pipeline.data.prepare import SINGLE_DOMAIN, load_table, validate_table
from lora_pipeline.errors import DataError
from lora_pipeline.evaluation.metrics import classification_metrics
from lora_pipeline.evaluation.tasks import Task, task_named
from lora_pipeline.models.adapters import load_adapter
from lora_pipeline.models.compute import compute_for
from lora_pipeline.provenance import evaluation_inputs
from lora_pipeline.registry import schema
from lora_pipeline.registry.artifacts import fetch_verified_adapter
from lora_pipeline.registry.register import unseen_rows


def rows_for_domain(cfg: PipelineConfig, path: str | Path, domain: str, task: Task) -> pd.DataFrame:
    """The file's rows of ``domain`` (every row when the file has no domain column): text and label (or target)."""
    table, _ = validate_table(load_table(path), cfg.data, str(path), task.name)
    domains = set(table["domain"])
    rows = table if domains == {SINGLE_DOMAIN} else table[table["domain"] == domain]
    if rows.empty:
        raise DataError(f"{path}: no rows of domain '{domain}' (domains in the file: {', '.join(sorted(domains))})")
    return rows[["text", task.truth_column]]


def compare_on_file(client: MlflowClient, cfg: PipelineConfig, name: str, path: str | Path) -> pd.DataFrame:
    """One row per version of ``name``, newest first: the metric promotion compares (promotion.metric, else the
    task's own: macro-F1, or ROUGE-L for a generation model) on the file's rows of its domain,
    with a bootstrap interval, and each version minus the champion on the same rows (paired bootstrap)."""
    model = client.get_registered_model(name)
    versions = sorted(schema.versions_of(client, name), key=lambda v: -int(v.version))
    # A classifier's versions carry their labels; a writer's have none (then the file needs a target column).
    task = task_named("classify" if any(v.tags.get(schema.LABELS) for v in versions) else "generate")
    task = task.with_metric(cfg.promotion.metric if cfg.task == task.name else None)  # else the task's own
    metric = task.metric
    rows = rows_for_domain(cfg, path, model.tags.get(schema.DOMAIN, ""), task)
    texts, truth = rows["text"].tolist(), rows[task.truth_column].tolist()
    aliases = schema.aliases_by_version(model)
    compute, inputs, promotion = compute_for(cfg.runtime), evaluation_inputs(cfg), cfg.promotion
    predictions, table = {}, []
    for version in versions:
        row = {"version": int(version.version), "aliases": ",".join(aliases.get(str(version.version), [])),
               "rows": len(texts)}
        target = cfg.work_dir / "compare" / name / f"v{version.version}"
        adapter = load_adapter(fetch_verified_adapter(client, cfg.tracking_uri, name, version.version, target),
                               cfg.base.cache_dir, compute)
        labels = list(adapter.meta.labels)
        unknown = sorted(set(truth) - set(labels)) if labels else []
        if unknown:
            raise DataError(f"{path}: label '{unknown[0]}' is not one of {name} v{version.version}'s labels "
                            f"({', '.join(labels)}); map it with data.label_map")
        pred = adapter.predict(texts, batch_size=adapter.kind.prediction_batch_size(inputs))
        predictions[str(version.version)] = (pred, labels)
        low, high = metric.interval(truth, pred, labels, promotion.bootstrap_samples, promotion.confidence)
        if labels:
            row["accuracy"] = round(classification_metrics(truth, pred, labels)["accuracy"], 4)
        row.update({metric.key: round(metric.score_rows(truth, pred, labels), 4),
                    f"{metric.key}_interval": f"[{low:.4f}, {high:.4f}]",
                    "seen_rows": len(texts) - len(unseen_rows(client, version, texts))})
        table.append(row)
    champion = next((v for v, names in aliases.items() if schema.CHAMPION in names), None)
    for row in table:
        version = str(row["version"])
        if champion is None or version == champion or predictions[version][1] != predictions[champion][1]:
            row["vs_champion"] = ""  # nothing to compare with (or other labels: not the same task)
            continue
        diff = metric.compare(truth, predictions[version][0], predictions[champion][0], predictions[version][1],
                            promotion.bootstrap_samples, promotion.confidence)
        row["vs_champion"] = f"v{champion}: {diff.diff:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]"
    return pd.DataFrame(table)
