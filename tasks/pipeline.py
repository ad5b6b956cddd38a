"""Thin Prefect tasks over lora_pipeline: each is a typed call into the library, nothing more.

Inputs are configs, paths and small dataclasses (hashable), never models or tensors.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from lora_pipeline.config import PipelineConfig
from lora_pipeline.data import DomainSplits, PreparedData, prepare_data
from lora_pipeline.datasets import resolve_data_path
from lora_pipeline.evaluation import DomainEvaluation, evaluate_domain
from lora_pipeline.registry import RegisteredAdapter, finish_parent_run, log_and_register, start_parent_run
from lora_pipeline.training import TrainedAdapter, train_adapter


@task(name="prepare-data")
def prepare_data_task(cfg: PipelineConfig) -> PreparedData:
    path = resolve_data_path(cfg.data.path, cfg.project_dir)
    return prepare_data(path, cfg.data, cfg.split, cfg.work_dir / "prepared")


@task(name="start-tracking")
def start_tracking_task(cfg: PipelineConfig, prepared: PreparedData, run_name: str | None = None) -> str:
    return start_parent_run(cfg, prepared, run_name)


@task(name="train-adapter", task_run_name="train-{splits.domain}")
def train_adapter_task(cfg: PipelineConfig, splits: DomainSplits) -> TrainedAdapter:
    out = cfg.work_dir / "adapters" / splits.domain / f"{splits.fingerprint[:12]}-{cfg.sha256()[:12]}"
    return train_adapter(splits, cfg, out)


@task(name="evaluate-adapter", task_run_name="evaluate-{splits.domain}")
def evaluate_adapter_task(cfg: PipelineConfig, splits: DomainSplits, trained: TrainedAdapter) -> DomainEvaluation:
    return evaluate_domain(splits, trained.adapter_dir, cfg, Path(trained.adapter_dir).parent / "evaluation")


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
def finish_tracking_task(parent_run_id: str, failed_domains: list[str]) -> None:
    finish_parent_run(parent_run_id, failed_domains)
