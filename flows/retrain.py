"""The retraining flow: prepare -> (train -> evaluate -> register) per domain, in parallel -> summary.

Composition only; the work lives in tasks/ (thin) and lora_pipeline/ (plain Python).
A failing domain does not stop the others: they are registered, then the flow fails naming the domain.
Unchanged domains are cache hits (no training, no new registry version); see tasks/pipeline.py.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from lora_pipeline.config import PipelineConfig, load_config
from lora_pipeline.errors import DomainFailure
from lora_pipeline.models.compute import describe
from lora_pipeline.provenance import evaluation_inputs, training_inputs
from lora_pipeline.reporting.report import findings, format_results_table, summary_rows
from tasks.pipeline import (
    adapter_dir_for,
    check_tracking_store_task,
    configure,
    evaluate_adapter_task,
    evaluation_dir_for,
    finish_tracking_task,
    prepare_data_task,
    recomputed_if_files_gone,
    register_adapter_task,
    report_run_task,
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


def task_runner_for(cfg: PipelineConfig) -> TaskRunner:
    """Threads here, or an existing Dask cluster whose worker processes train the domains."""
    if cfg.runtime.task_runner == "dask":
        from prefect_dask import DaskTaskRunner  # only needed for scale-out

        return DaskTaskRunner(address=cfg.runtime.dask_address)
    return ThreadPoolTaskRunner(max_workers=cfg.runtime.parallel_domains)


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig | None = None, domains: list[str] | None = None, refresh: bool = False) -> list[dict]:
    """Retrain, evaluate and register one adapter per domain.

    ``domains``: only these (a rebuild). ``refresh``: retrain and register even if nothing changed.
    """
    cfg = config or load_config()
    if domains:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"domains": list(domains)})})
    if refresh:
        cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"refresh_cache": True})})
    # Prefect fixes the task runner per flow, and a deployment loads this flow from its entrypoint, so
    # the runner the config asks for is applied here, to the subflow that does the work.
    return build_adapters.with_options(task_runner=task_runner_for(cfg))(cfg)


@flow(name="build-adapters", log_prints=True)
def build_adapters(cfg: PipelineConfig) -> list[dict]:
    (check_tracking_store, prepare_data, start_tracking, train_adapter, evaluate_adapter, register_adapter,
     finish_tracking, report_run) = (
        configure(t, cfg) for t in (check_tracking_store_task, prepare_data_task, start_tracking_task,
                                    train_adapter_task, evaluate_adapter_task, register_adapter_task,
                                    finish_tracking_task, report_run_task))

    # What each stage reads of the config; resolving the compute first, so that a device this machine lacks
    # stops the run before a tracking run is opened.
    training, evaluation = training_inputs(cfg), evaluation_inputs(cfg)
    print(f"compute: {describe(training.compute)} (runtime.device={cfg.runtime.device}, "
          f"runtime.precision={cfg.runtime.precision})")
    check_tracking_store(cfg)  # a store that cannot be written or reached stops the run before any work
    prepared = prepare_data(cfg)  # every input error stops here, before training or registering
    parent_run_id = start_tracking(cfg, prepared)

    # Submitted stage by stage so the pool's workers start every domain's training before any
    # evaluation task blocks a worker waiting on its upstream.
    # A cached result is used only while its files exist (they may have been deleted since).
    roots = {d: adapter_dir_for(cfg.work_dir, s, training) for d, s in prepared.domains.items()}
    trained = {d: recomputed_if_files_gone(train_adapter, roots[d] / "adapter").submit(s, training, cfg.work_dir)
               for d, s in prepared.domains.items()}
    evaluated = {d: recomputed_if_files_gone(evaluate_adapter, evaluation_dir_for(roots[d], s, training, evaluation))
                 .submit(s, training, evaluation, trained[d]) for d, s in prepared.domains.items()}
    registered = {
        d: register_adapter.submit(cfg, parent_run_id, prepared, s, trained[d], evaluated[d])
        for d, s in prepared.domains.items()
    }

    results, failures = {}, {}
    for d in prepared.domains:
        error = _first_failure([("train", trained[d]), ("evaluate", evaluated[d]), ("register", registered[d])])
        if error:
            failures[d] = error
        else:
            results[d] = (trained[d].result(), evaluated[d].result(), registered[d].result())
    finished = finish_tracking(parent_run_id, sorted(failures), {d: r[2].run_id for d, r in results.items()},
                               return_state=True)
    if not finished.is_completed():  # the domains' versions are registered; only the parent run's status is off
        print(f"warning: could not close the MLflow run {parent_run_id}: {finished.result(raise_on_failure=False)}")
    if results:  # the report is a view of what is registered: if it fails, the adapters still stand
        report = report_run(cfg, parent_run_id, return_state=True)
        if not report.is_completed():
            print(f"warning: the comparison report failed: {report.result(raise_on_failure=False)}")

    rows = summary_rows(results, failures, prepared.skipped_domains)
    create_table_artifact(key="retrain-summary", table=rows, description="Adapter vs zero-shot base vs TF-IDF")
    create_markdown_artifact(key="retrain-report", markdown=format_results_table(rows), description="Per-domain results")
    print(format_results_table(rows))
    for line in findings(rows):
        print(line)
    if failures:
        raise DomainFailure("; ".join(f"domain '{d}' {e}" for d, e in sorted(failures.items())))
    return rows
