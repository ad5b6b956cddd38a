"""Thin Prefect tasks over lora_pipeline: each is a typed call into the library, nothing more.

Inputs are configs, paths and small dataclasses (hashable, picklable for Dask), never models or tensors.
Training and evaluation are cached on what made them (``lora_pipeline.provenance``) plus the task's
source; ``configure`` adds the per-project options (cache location, retries, timeout) from the config.
"""

from __future__ import annotations

from pathlib import Path

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import exponential_backoff

from lora_pipeline.config import EvaluationInputs, PipelineConfig, TrainingInputs, apply_runtime_env

apply_runtime_env()  # a Dask worker imports this module first: offline/no-telemetry before transformers loads

from lora_pipeline.data.datasets import resolve_data_path  # noqa: E402
from lora_pipeline.data.prepare import DomainSplits, PreparedData, domain_dirname, prepare_data  # noqa: E402
from lora_pipeline.errors import is_transient  # noqa: E402
from lora_pipeline.evaluation.evaluate import DomainEvaluation  # noqa: E402
from lora_pipeline.evaluation.tasks import task_named  # noqa: E402
from lora_pipeline.provenance import adapter_key, evaluation_key  # noqa: E402
from lora_pipeline.registry.register import RegisteredAdapter, log_and_register  # noqa: E402
from lora_pipeline.registry.tracking import check_store, finish_parent_run, start_parent_run  # noqa: E402
from lora_pipeline.reporting.report import ReportFiles, report_run  # noqa: E402
from lora_pipeline.training.trainer import TrainedAdapter, train_in_own_process  # noqa: E402


def adapter_dir_for(work_dir: Path, splits: DomainSplits, training: TrainingInputs) -> Path:
    return Path(work_dir) / "adapters" / domain_dirname(splits.domain) / adapter_key(splits, training)[:16]


def evaluation_dir_for(adapter_root: Path, splits: DomainSplits, training: TrainingInputs,
                       evaluation: EvaluationInputs) -> Path:
    return Path(adapter_root) / f"evaluation-{evaluation_key(splits, training, evaluation)[:12]}"


# Cache keys: exactly the inputs each task hands to the library (+ data and code), and Prefect's hash of
# the task's own source.
TRAIN_CACHE = TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=lambda ctx, p: adapter_key(p["splits"], p["training"]))
EVALUATE_CACHE = TASK_SOURCE + CacheKeyFnPolicy(
    cache_key_fn=lambda ctx, p: evaluation_key(p["splits"], p["training"], p["evaluation"]))


def recomputed_if_files_gone(t: Task, *paths: Path) -> Task:
    """``t``, recomputing instead of reading its cache when a file its cached result points to is gone
    (someone deleted .lora_pipeline/adapters/): the record would hand on paths that no longer exist."""
    return t if all(Path(p).exists() for p in paths) else t.with_options(refresh_cache=True)


def retry_if_transient(task, task_run, state) -> bool:
    """Retry a busy store or flaky I/O; never a timeout (it would only time out again) or a bug."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and not isinstance(error, TaskRunTimeoutError) and is_transient(error)


@task(name="check-tracking-store")
def check_tracking_store_task(cfg: PipelineConfig) -> None:
    check_store(cfg)


@task(name="prepare-data")
def prepare_data_task(cfg: PipelineConfig) -> PreparedData:
    path = resolve_data_path(cfg.data.path, cfg.project_dir)
    prepared = prepare_data(path, cfg.data, cfg.split, cfg.work_dir / "prepared", max_labels=cfg.api.max_labels,
                            task=cfg.task, base=cfg.base)
    for reason in prepared.skipped_domains.values():
        print(f"note: {path.name}: {reason}; left out, not trained")
    for domain, labels in prepared.dropped_labels.items():
        for label, rows in labels.items():
            print(f"note: {path.name}: domain '{domain}': label '{label}' has {rows} row(s), fewer than "
                  f"split.min_rows_per_label={cfg.split.min_rows_per_label}; left out of this domain "
                  "(merge it into another label with data.label_map to keep it)")
    asked = cfg.data.name or path.stem
    if prepared.dataset != asked:
        print(f"note: dataset name '{asked}' is registered as '{prepared.dataset}' (MLflow-safe characters only)")
    return prepared


@task(name="start-tracking")
def start_tracking_task(cfg: PipelineConfig, prepared: PreparedData, run_name: str | None = None) -> str:
    run_id, abandoned = start_parent_run(cfg, prepared, run_name)
    if abandoned:
        print(f"note: marked {len(abandoned)} MLflow run(s) left RUNNING by a killed earlier run as KILLED")
    return run_id


@task(name="train-adapter", task_run_name="train-{splits.domain}", cache_policy=TRAIN_CACHE)
def train_adapter_task(splits: DomainSplits, training: TrainingInputs, work_dir: Path) -> TrainedAdapter:
    return train_in_own_process(splits, training, adapter_dir_for(work_dir, splits, training))


@task(name="evaluate-adapter", task_run_name="evaluate-{splits.domain}", cache_policy=EVALUATE_CACHE)
def evaluate_adapter_task(splits: DomainSplits, training: TrainingInputs, evaluation: EvaluationInputs,
                          trained: TrainedAdapter) -> DomainEvaluation:
    return task_named(evaluation.task).evaluate(
        splits, trained.adapter_dir, evaluation,
        evaluation_dir_for(Path(trained.adapter_dir).parent, splits, training, evaluation))


@task(name="register-adapter", task_run_name="register-{splits.domain}")
def register_adapter_task(
    cfg: PipelineConfig,
    parent_run_id: str,
    prepared: PreparedData,
    splits: DomainSplits,
    trained: TrainedAdapter,
    evaluation: DomainEvaluation,
) -> RegisteredAdapter:
    return log_and_register(cfg, parent_run_id, prepared, splits, trained, evaluation)


@task(name="finish-tracking")
def finish_tracking_task(parent_run_id: str, failed_domains: list[str], domain_runs: dict[str, str]) -> None:
    finish_parent_run(parent_run_id, failed_domains, domain_runs)


@task(name="report-run")
def report_run_task(cfg: PipelineConfig, run_id: str | None = None, out_dir: str | None = None) -> ReportFiles:
    """The run's comparison report, logged to its MLflow run and shown as this task's Prefect artifact."""
    files = report_run(cfg, run_id, out_dir)
    create_markdown_artifact(key="comparison-report", markdown=files.tables_markdown,
                             description=f"Per-domain comparison of MLflow run {files.run_id}")
    return files


def configure(t: Task, cfg: PipelineConfig) -> Task:
    """``t`` with this project's options: retries with exponential backoff, and for the cached tasks the
    cache under work_dir (so it lives and dies with the adapters it points to) and the training timeout."""
    options = dict(retries=cfg.runtime.retries, retry_delay_seconds=exponential_backoff(cfg.runtime.retry_delay_s),
                   retry_condition_fn=retry_if_transient)
    if t is train_adapter_task or t is evaluate_adapter_task:
        options.update(result_storage=cfg.work_dir / "task-cache", refresh_cache=cfg.runtime.refresh_cache)
    if t is train_adapter_task and cfg.runtime.train_timeout_s:
        options.update(timeout_seconds=cfg.runtime.train_timeout_s)
    return t.with_options(**options)
