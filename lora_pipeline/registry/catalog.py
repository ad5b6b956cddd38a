"""Read the registry for people: every domain's model at a glance, and one domain's versions side by side.

Behind ``lora-pipeline models list`` and ``lora-pipeline models compare DOMAIN``.
"""

from __future__ import annotations

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lora_pipeline.config import PipelineConfig
from lora_pipeline.errors import RegistryError
from lora_pipeline.registry import schema


def model_name_for(client: MlflowClient, cfg: PipelineConfig, domain_or_name: str) -> str:
    """'amazon' -> 'vader-amazon' (the config's dataset and base); a full registered name is taken as is."""
    for name in (schema.registered_name(cfg.dataset_name, domain_or_name, cfg.base.name), domain_or_name):
        try:
            client.get_registered_model(name)
            return name
        except MlflowException:
            continue
    raise RegistryError(f"model '{cfg.dataset_name}-{domain_or_name}': not in the registry at {cfg.tracking_uri}")


def _ranking_metric(tags: dict, metrics: dict) -> str:
    """What the version's promotion compared: its tag, or (versions from before the tag) what its run logged."""
    return tags.get(schema.PROMOTION_METRIC) or ("rougeL" if "adapter_rougeL" in metrics else "macro_f1")


def _version_row(client: MlflowClient, version, aliases: list[str]) -> dict:
    metrics = {k: round(v, 4) for k, v in (client.get_run(version.run_id).data.metrics if version.run_id else {}).items()}
    tags = version.tags
    metric = _ranking_metric(tags, metrics)
    return {
        "version": int(version.version),
        "aliases": ",".join(aliases),
        "created": pd.Timestamp(version.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M"),
        "metric": metric,
        # The compared metric of the adapter, the zero-shot base and the classical baseline (TF-IDF or lead).
        "adapter": metrics.get(f"adapter_{metric}"),
        "base": metrics.get(f"base_{metric}"),
        "classical": metrics.get(f"tfidf_{metric}", metrics.get(f"lead_{metric}")),
        "adapter_accuracy": metrics.get("adapter_accuracy"),
        "adapter_kb": round(metrics["adapter_size_bytes"] / 1024, 1) if "adapter_size_bytes" in metrics else None,
        "train_seconds": metrics.get("train_seconds"),
        "latency_p50_ms": metrics.get("latency_p50_ms"),
        "n_train": metrics.get("n_train"),
        "data": tags.get(schema.DOMAIN_FINGERPRINT, "")[:12],
        "config": tags.get(schema.CONFIG_SHA256, "")[:12],
        "code": tags.get(schema.CODE_VERSION, ""),
        "decision": tags.get(schema.PROMOTION_DECISION, ""),
        # The champion of the time on this version's test rows, and this version minus it (with its interval).
        "champion_rescored": tags.get(schema.champion_rescored(metric), ""),
        "vs_champion": tags.get(schema.VS_CHAMPION, ""),
    }


def compare_versions(client: MlflowClient, name: str) -> pd.DataFrame:
    """Every version of ``name``, newest first, with its metrics, aliases and provenance."""
    aliases = schema.aliases_by_version(client.get_registered_model(name))
    versions = schema.versions_of(client, name)
    rows = [_version_row(client, v, aliases.get(str(v.version), [])) for v in versions]
    return pd.DataFrame(rows).sort_values("version", ascending=False).reset_index(drop=True)


def list_models(client: MlflowClient) -> pd.DataFrame:
    """One row per pipeline-registered model: its domain, version count, aliases and champion's metrics."""
    rows = []
    for model in schema.managed_models(client):
        aliases = {alias: str(v) for alias, v in model.aliases.items()}
        versions = schema.versions_of(client, model.name)
        row = {
            "model": model.name,
            "domain": model.tags.get(schema.DOMAIN, ""),
            "versions": len(versions),
            "latest": max((int(v.version) for v in versions), default=None),
            "aliases": ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())),
        }
        if schema.CHAMPION in aliases:
            champion = _version_row(client, client.get_model_version(model.name, aliases[schema.CHAMPION]), [schema.CHAMPION])
            row.update({k: champion[k] for k in ("metric", "adapter", "base", "classical", "adapter_kb",
                                                   "train_seconds")})
        rows.append(row)
    return pd.DataFrame(rows)
