"""MLflow tracking and registry: a parent run per flow run, a nested run per domain, one registered
model per domain (``<dataset>-<domain>``) whose versions carry provenance and the promotion decision.

Runs are addressed by id through explicit ``parent_run_id``s because MLflow's active-run stack is per
thread and domains are processed in worker threads.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.exceptions import MlflowException

from lora_pipeline.base_models import get_spec
from lora_pipeline.catalog import aliases_by_version
from lora_pipeline.champions import AUTO, set_champion
from lora_pipeline.config import BaseModelConfig, PipelineConfig
from lora_pipeline.data import DomainSplits, PreparedData
from lora_pipeline.evaluation import DomainEvaluation
from lora_pipeline.metrics import SCALAR_METRICS
from lora_pipeline.mlflow_model import PYFUNC_ENTRY, signature_for
from lora_pipeline.provenance import adapter_key, code_version
from lora_pipeline.promotion import CHAMPION, CHALLENGER, PromotionDecision, decide_promotion
from lora_pipeline.training import TrainedAdapter

MODEL_ARTIFACT = "adapter"
DOMAIN_RUN_TAG = "domain_run/"  # + domain, on the parent run -> the run holding that domain's evaluation
# What a registered version needs to load: the libraries and the package that carries the base.
PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2", "safetensors==0.8.0", "pandas"]


@dataclass(frozen=True)
class RegisteredAdapter:
    domain: str
    model_name: str
    version: str
    run_id: str
    alias: str  # the alias this version holds now ("" for none)
    reason: str
    is_new: bool  # False: this exact adapter (same data, config and code) was already registered


DEFAULT_BASE = BaseModelConfig().name  # its models keep the plain <dataset>-<domain> names


def registered_name(cfg: PipelineConfig, domain: str) -> str:
    """'<dataset>-<domain>', plus '-<base>' for any base but the default: one champion per domain and base."""
    suffix = "" if cfg.base.name == DEFAULT_BASE else f"-{cfg.base.name}"
    return f"{cfg.data.name}-{domain}{suffix}"


def pip_requirements(cfg: PipelineConfig) -> list[str]:
    """What a registered version needs to load: the libraries and the package that carries its base."""
    package = get_spec(cfg.base.name).package
    return [*PIP_REQUIREMENTS, f"{package}=={importlib.metadata.version(package)}"]


def setup_tracking(cfg: PipelineConfig) -> str:
    """Point MLflow at the configured store; create the experiment (with our artifact root) if missing."""
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to os.environ; left there, it would
    # redirect the next config loaded in this process (a served deployment runs many flows) to this store.
    exported = MLFLOW_TRACKING_URI.get_raw()
    mlflow.set_tracking_uri(cfg.tracking_uri)
    if exported is None:
        MLFLOW_TRACKING_URI.unset()
    else:
        MLFLOW_TRACKING_URI.set(exported)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if cfg.tracking_uri.startswith("sqlite:"):  # local store: keep artifacts beside it, not under ./mlruns
        cfg.artifact_root.mkdir(parents=True, exist_ok=True)
        artifact_location = cfg.artifact_root.as_uri()
    try:
        return client.create_experiment(cfg.tracking.experiment, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a concurrent process
        return client.get_experiment_by_name(cfg.tracking.experiment).experiment_id


def start_parent_run(cfg: PipelineConfig, prepared: PreparedData, run_name: str | None = None) -> str:
    experiment_id = setup_tracking(cfg)
    client = MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={"dataset": prepared.dataset, "data_fingerprint": prepared.fingerprint,
              "code_version": code_version(), "base_model": cfg.base.name},
    )
    client.log_param(run.info.run_id, "domains", ",".join(prepared.domains))
    client.log_param(run.info.run_id, "config_sha256", cfg.sha256())
    client.log_text(run.info.run_id, cfg.model_dump_json(indent=2), "config.json")
    client.log_text(run.info.run_id, prepared.to_json(), "prepared_data.json")
    return run.info.run_id


def finish_parent_run(run_id: str, failed_domains: list[str], domain_runs: dict[str, str] | None = None) -> None:
    """``domain_runs``: domain -> the run holding its evaluation (for a cached domain, the run that trained
    it), recorded on the parent so that the run's report covers every domain it served."""
    client = MlflowClient()
    client.set_tag(run_id, "failed_domains", ",".join(failed_domains) or "none")
    for domain, domain_run_id in (domain_runs or {}).items():
        client.set_tag(run_id, f"{DOMAIN_RUN_TAG}{domain}", domain_run_id)
    client.set_terminated(run_id, "FAILED" if failed_domains else "FINISHED")


def _flat_params(cfg: PipelineConfig) -> dict[str, object]:
    sections = cfg.model_dump(mode="json", include={"base", "lora", "train", "split", "promotion"})
    return {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}


def _domain_metrics(trained: TrainedAdapter, evaluation: DomainEvaluation, splits: DomainSplits) -> dict[str, float]:
    metrics = {f"{model}_{name}": values[name] for model, values in evaluation.metrics.items() for name in SCALAR_METRICS}
    metrics.update(
        adapter_size_bytes=trained.adapter_size_bytes,
        train_seconds=trained.train_seconds,
        train_steps=trained.steps,
        trainable_params=trained.trainable_params,
        trainable_share=trained.trainable_params / trained.total_params,
        best_val_macro_f1=trained.best_val_macro_f1,
        latency_p50_ms=evaluation.latency_p50_ms,
        latency_p95_ms=evaluation.latency_p95_ms,
        throughput_per_s=evaluation.throughput_per_s,
        **{f"n_{split}": n for split, n in splits.counts.items()},
    )
    return metrics


def current_champion(client: MlflowClient, name: str) -> tuple[str, float] | None:
    """(version, adapter macro-F1) of ``name@champion``, or None when there is none yet."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return version.version, float(client.get_run(version.run_id).data.metrics["adapter_macro_f1"])


def find_version_by_tag(client: MlflowClient, name: str, key: str, value: str):
    """The newest version of ``name`` whose tag ``key`` equals ``value``, or None."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    matching = [v for v in versions if v.tags.get(key) == value]
    return max(matching, key=lambda v: int(v.version), default=None)


def log_and_register(
    cfg: PipelineConfig,
    parent_run_id: str,
    prepared: PreparedData,
    splits: DomainSplits,
    trained: TrainedAdapter,
    evaluation: DomainEvaluation,
) -> RegisteredAdapter:
    """Nested run with params, metrics, artifacts and the adapter model; register it; apply the rule."""
    experiment_id = setup_tracking(cfg)
    client = MlflowClient()
    name = registered_name(cfg, splits.domain)
    identity = adapter_key(cfg, splits)
    existing = None if cfg.runtime.refresh_cache else find_version_by_tag(client, name, "adapter_key", identity)
    if existing is not None:  # a cached re-run: the same adapter is not registered twice
        return RegisteredAdapter(domain=splits.domain, model_name=name, version=str(existing.version),
                                 run_id=existing.run_id, alias=",".join(aliases_by_version(client.get_registered_model(name)).get(str(existing.version), [])),
                                 reason=f"unchanged: same data, config and code as v{existing.version}",
                                 is_new=False)
    provenance = {
        "domain": splits.domain,
        "base_model": cfg.base.name,
        "data_fingerprint": prepared.fingerprint,
        "domain_fingerprint": splits.fingerprint,
        "config_sha256": cfg.sha256(),
        "code_version": code_version(),
        "adapter_key": identity,
        "seed": str(cfg.train.seed),
        "labels": ",".join(splits.labels),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=splits.domain, parent_run_id=parent_run_id,
                          nested=True, tags=provenance) as run:
        mlflow.log_params({**_flat_params(cfg), **provenance})
        metrics = _domain_metrics(trained, evaluation, splits)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(evaluation.artifacts_dir, artifact_path="evaluation")
        model_info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_ENTRY),  # models-from-code: no pickle in the artifact
            artifacts={"adapter": trained.adapter_dir},
            pip_requirements=pip_requirements(cfg),
            signature=signature_for(splits.labels),
            metadata={"base_model": cfg.base.name, "labels": splits.labels, "domain": splits.domain},
        )
        champion = current_champion(client, name)
        decision: PromotionDecision = decide_promotion(
            adapter_f1=evaluation.macro_f1("adapter"),
            base_f1=evaluation.macro_f1("base"),
            margin=cfg.promotion.min_gain_over_base,
            champion_f1=champion[1] if champion else None,
            champion_version=champion[0] if champion else None,
        )
        version = mlflow.register_model(model_info.model_uri, name, tags=provenance)
        try:
            for key, value in {
                "adapter_macro_f1": f"{evaluation.macro_f1('adapter'):.4f}",
                "base_macro_f1": f"{evaluation.macro_f1('base'):.4f}",
                "tfidf_macro_f1": f"{evaluation.macro_f1('tfidf'):.4f}",
                "promotion_decision": decision.alias,
                "promotion_reason": decision.reason,
            }.items():
                client.set_model_version_tag(name, version.version, key, value)
            if decision.alias == CHAMPION:
                client.set_model_version_tag(name, version.version, "previous_champion",
                                             champion[0] if champion else "none")
                set_champion(client, name, version.version, AUTO, decision.reason)
            else:
                client.set_registered_model_alias(name, CHALLENGER, version.version)
            for tag, value in {"dataset": cfg.data.name, "domain": splits.domain, "base_model": cfg.base.name,
                               "managed_by": "lora-pipeline"}.items():
                client.set_registered_model_tag(name, tag, value)
        except Exception:
            # Nothing half-done stays registered: drop the version that did not get its tags/alias.
            client.delete_model_version(name, version.version)
            raise
        mlflow.set_tags({"registered_model": name, "registered_version": version.version,
                         "promotion_decision": decision.alias, "trained_on": trained.trained_on})
    return RegisteredAdapter(domain=splits.domain, model_name=name, version=str(version.version),
                             run_id=run.info.run_id, alias=decision.alias, reason=decision.reason, is_new=True)

