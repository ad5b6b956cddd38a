"""MLflow tracking: a parent run per pipeline run, a nested run per domain holding its params, metrics,
evaluation artifacts and the adapter's MLflow model.

Runs are addressed by id through explicit ``parent_run_id``s because MLflow's active-run stack is per
thread and domains are processed in worker threads.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.exceptions import MlflowException

from lora_pipeline.config import PipelineConfig, domain_dirname
from lora_pipeline.data.prepare import DomainSplits, PreparedData, text_key
from lora_pipeline.errors import RegistryError
from lora_pipeline.models.adapters import lora_settings_for
from lora_pipeline.provenance import code_version
from lora_pipeline.registry import schema
from lora_pipeline.registry.mlflow_model import CODE_PATHS, model_requirements, pyfunc_model_for

if TYPE_CHECKING:
    from lora_pipeline.evaluation.evaluate import DomainEvaluation
    from lora_pipeline.training.trainer import TrainedAdapter

MODEL_ARTIFACT = "adapter"
SEEN_TEXTS_ARTIFACT = "data/seen_texts.json"  # {"train": [text_key, ...], "val": [...]}


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
    except MlflowException:
        created = client.get_experiment_by_name(cfg.tracking.experiment)  # by a concurrent process meanwhile?
        if created is None:  # no: the store refused the write (read-only, full, ...)
            raise
        return created.experiment_id


def check_store(cfg: PipelineConfig) -> None:
    """Before any data is prepared: the tracking store can be reached, read and written (a tag on the
    experiment is written, so a read-only store fails here too), or the run stops with one line."""
    uri = cfg.tracking_uri
    cfg.project_dir.mkdir(parents=True, exist_ok=True)  # the default store's folder: the run writes here anyway
    db = uri.removeprefix("sqlite:///")
    if db != uri and "?" not in db and not db.startswith("file:"):  # a plain SQLite path (not a URI with options)
        for what, path in (("the folder of", Path(db).parent), ("the artifact folder of", cfg.artifact_root.parent)):
            if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
                raise RegistryError(f"tracking store {uri}: {what} the store, {path}, is not a writable folder")
    try:
        experiment_id = setup_tracking(cfg)
        MlflowClient().set_experiment_tag(experiment_id, "lora_pipeline.store_checked_at", this_process())
    except Exception as exc:  # noqa: BLE001 - whatever the store says, the run cannot go on
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise RegistryError(f"tracking store {uri} cannot be used ({reason})") from exc


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(owner: str) -> bool:
    """True when ``owner`` (host:pid) is a process of this host that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's run: it cannot be checked from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def mark_abandoned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Runs left RUNNING by a pipeline process of this host that was killed: marked KILLED (with their nested
    domain runs), so the MLflow UI and `report` never take them for a run in progress. Returns their ids."""
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    dead = {r.info.run_id for r in running if _gone(r.data.tags.get(schema.RUN_BY, ""))}
    dead |= {r.info.run_id for r in running if r.data.tags.get("mlflow.parentRunId") in dead}
    for run_id in sorted(dead):
        client.set_tag(run_id, schema.FAILED_DOMAINS, "unknown: the process was killed")
        client.set_terminated(run_id, "KILLED")
    return sorted(dead)


def start_parent_run(cfg: PipelineConfig, prepared: PreparedData,
                     run_name: str | None = None) -> tuple[str, list[str]]:
    """The pipeline run's MLflow run id, and the ids of runs a killed earlier run had left RUNNING."""
    experiment_id = setup_tracking(cfg)
    client = MlflowClient()
    abandoned = mark_abandoned_runs(client, experiment_id)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={schema.DATASET: prepared.dataset, schema.DATA_FINGERPRINT: prepared.fingerprint,
              schema.CODE_VERSION: code_version(), schema.BASE_MODEL: cfg.base.name, schema.RUN_BY: this_process(),
              schema.PROMOTION_METRIC: cfg.promotion_metric},
    )
    client.log_param(run.info.run_id, "domains", ",".join(prepared.domains))
    client.log_param(run.info.run_id, schema.CONFIG_SHA256, cfg.sha256())
    client.log_text(run.info.run_id, cfg.model_dump_json(indent=2), "config.json")
    client.log_text(run.info.run_id, prepared.to_json(), "prepared_data.json")
    return run.info.run_id, abandoned


def finish_parent_run(run_id: str, failed_domains: list[str], domain_runs: dict[str, str] | None = None) -> None:
    """``domain_runs``: domain -> the run holding its evaluation (for a cached domain, the run that trained
    it), recorded on the parent so that the run's report covers every domain it served."""
    client = MlflowClient()
    client.set_tag(run_id, schema.FAILED_DOMAINS, ",".join(failed_domains) or "none")
    for domain, domain_run_id in (domain_runs or {}).items():
        # A domain is any string of the user's data; a tag key allows only some characters.
        client.set_tag(run_id, f"{schema.DOMAIN_RUN_PREFIX}{domain_dirname(domain)}", domain_run_id)
    client.set_terminated(run_id, "FAILED" if failed_domains else "FINISHED")


def _flat_params(cfg: PipelineConfig, bag_of_words: bool) -> dict[str, object]:
    """The config sections that made an adapter, with the LoRA modules the config left to the base (null)
    filled in as its domain trained them (``bag_of_words``: with the term or without), so a version's params
    say which layers and modules it adapted."""
    cfg = cfg.model_copy(update={"lora": lora_settings_for(cfg.base.name, cfg.lora, bag_of_words)})
    sections = cfg.model_dump(mode="json", include={"base", "lora", "train", "split", "promotion"}
                              | ({"generation"} if cfg.task == "generate" else set()))
    flat = {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}
    if cfg.task == "classify":  # what the classical baseline the gate compared against was allowed to tune
        flat.update({f"eval.{key}": getattr(cfg.eval, key) for key in ("tfidf_c_grid", "tfidf_class_weight")})
    return {"task": cfg.task, **flat}


def domain_metrics(trained: TrainedAdapter, evaluation: DomainEvaluation, splits: DomainSplits) -> dict[str, float]:
    """Every scalar of every model's metrics ("adapter_macro_f1", "lead_rougeL", ...) and the adapter's figures."""
    metrics = {f"{model}_{name}": float(value) for model, values in evaluation.metrics.items()
               for name, value in values.items() if isinstance(value, (int, float))}
    metrics.update(evaluation.efficiency)
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
        max_length=trained.max_length,
        truncated_share=trained.truncated_share,
        epochs_run=trained.epochs_run,
        class_weighted=float(trained.class_weights is not None),
        bag_of_words_term=float(trained.bag_of_words),
        **trained.fitted,
    )
    if trained.bag_of_words_tfidf_val_f1 is not None:  # what decided the term, below bag_of_words_min_labels
        metrics["bag_of_words_tfidf_val_macro_f1"] = trained.bag_of_words_tfidf_val_f1
    if math.isnan(trained.best_val_macro_f1):  # a generation adapter: chosen by validation loss
        del metrics["best_val_macro_f1"]
    if splits.available:  # the row cap: what the user would pay to train on every row
        used, available = splits.counts["train"], splits.available["train"]
        metrics.update(n_train_available=available,
                       estimated_train_seconds_all_rows=round(trained.train_seconds * available / max(1, used), 1))
    return metrics


def log_domain_run(cfg: PipelineConfig, parent_run_id: str, splits: DomainSplits, trained: TrainedAdapter,
                   evaluation: DomainEvaluation, provenance: dict[str, str]) -> tuple[str, str]:
    """A run nested under the pipeline's run: params, metrics, evaluation artifacts and the adapter's
    MLflow model (the adapter folder only; the base is named, not copied). Returns (run id, model URI)."""
    experiment_id = setup_tracking(cfg)
    with mlflow.start_run(experiment_id=experiment_id, run_name=splits.domain, parent_run_id=parent_run_id,
                          nested=True, tags=provenance) as run:
        mlflow.log_params({**_flat_params(cfg, trained.bag_of_words), **provenance})
        if trained.bag_of_words_reason:
            mlflow.set_tag(schema.BAG_OF_WORDS_REASON, trained.bag_of_words_reason)
        mlflow.log_metrics(domain_metrics(trained, evaluation, splits))
        mlflow.log_artifacts(evaluation.artifacts_dir, artifact_path="evaluation")
        # Hashes of the texts this adapter learned from: a later version's comparison leaves them out.
        mlflow.log_dict({split: [text_key(t) for t in splits.read(split)["text"]] for split in ("train", "val")},
                        SEEN_TEXTS_ARTIFACT)
        requirements, install = model_requirements(cfg.base.name)
        entry, signature = pyfunc_model_for(splits.labels)
        model_info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(entry),  # models-from-code: no pickle in the artifact
            artifacts={"adapter": trained.adapter_dir},
            code_paths=CODE_PATHS,
            pip_requirements=requirements,
            signature=signature,
            metadata={"base_model": cfg.base.name, "labels": splits.labels, "domain": splits.domain, **install},
        )
        mlflow.set_tag(schema.TRAINED_ON, trained.trained_on)
    return run.info.run_id, model_info.model_uri
