"""The retraining flow: prepare -> (train -> evaluate -> register) per domain, in parallel -> summary.

Composition only; the work lives in tasks/ (thin) and lora_pipeline/ (plain Python).
A failing domain does not stop the others: they are registered, then the flow fails naming the domain.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from lora_pipeline.config import PipelineConfig, load_config
from lora_pipeline.errors import DomainFailure
from lora_pipeline.report import format_results_table, summary_rows
from tasks.pipeline import (
    evaluate_adapter_task,
    finish_tracking_task,
    prepare_data_task,
    register_adapter_task,
    start_tracking_task,
    train_adapter_task,
)


def _first_failure(stages: list[tuple[str, PrefectFuture]]) -> str | None:
    """The first failed stage of one domain's chain as 'stage: error', or None if all completed."""
    for stage, future in stages:
        future.wait()
        if not future.state.is_completed():
            error = future.result(raise_on_failure=False)
            return f"{stage} failed: {type(error).__name__}: {error}"
    return None


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig | None = None, domains: list[str] | None = None) -> list[dict]:
    cfg = config or load_config()
    if domains:  # e.g. a single-domain rebuild
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"domains": list(domains)})})

    prepared = prepare_data_task(cfg)  # every input error stops here, before training or registering
    parent_run_id = start_tracking_task(cfg, prepared)

    # Submitted stage by stage so the pool's workers start every domain's training before any
    # evaluation task blocks a worker waiting on its upstream.
    trained = {d: train_adapter_task.submit(cfg, s) for d, s in prepared.domains.items()}
    evaluated = {d: evaluate_adapter_task.submit(cfg, s, trained[d]) for d, s in prepared.domains.items()}
    registered = {
        d: register_adapter_task.submit(cfg, parent_run_id, prepared, s, trained[d], evaluated[d])
        for d, s in prepared.domains.items()
    }

    results, failures = {}, {}
    for d in prepared.domains:
        error = _first_failure([("train", trained[d]), ("evaluate", evaluated[d]), ("register", registered[d])])
        if error:
            failures[d] = error
        else:
            results[d] = (trained[d].result(), evaluated[d].result(), registered[d].result())
    finish_tracking_task(parent_run_id, sorted(failures))

    rows = summary_rows(results, failures)
    create_table_artifact(key="retrain-summary", table=rows, description="Adapter vs zero-shot base vs TF-IDF")
    create_markdown_artifact(key="retrain-report", markdown=format_results_table(rows), description="Per-domain results")
    print(format_results_table(rows))
    if failures:
        raise DomainFailure("; ".join(f"domain '{d}' {e}" for d, e in sorted(failures.items())))
    return rows


def retrain_with(cfg: PipelineConfig):
    """The flow with the domain parallelism chosen by the config (Prefect picks the runner per flow)."""
    return retrain.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.runtime.parallel_domains))
