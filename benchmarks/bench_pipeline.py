"""The pipeline's own wall times: a first run, a cached no-change re-run, and what Prefect + MLflow add.

Both runs are flow calls in this process, timed after Prefect's temporary server has started (its
start-up is timed separately with an empty flow) and after the imports.

Overhead = pipeline wall time - the time during which some ML work was running, where the ML work is
the prepare-data, train-adapter and evaluate-adapter task runs (their start and end as Prefect recorded
them). What is left is the time nothing but orchestration ran: the flow and task machinery, MLflow
tracking, logging and registration (start-tracking, register-*, finish-tracking) and the report, when
they did not overlap another domain's training. The tracking tasks' own durations are reported too.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from lora_pipeline.config import PipelineConfig

WORK_TASKS = ("prepare-data", "train-", "evaluate-")  # task run name prefixes: the ML work itself
TRACKING_TASKS = ("start-tracking", "register-", "finish-tracking", "report-run")


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _task_runs(since: datetime, until: datetime) -> list:
    """Task runs created between ``since`` and ``until`` (the scratch project's Prefect holds only ours)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
    return [r for r in runs if r.created and since <= r.created <= until]


def _timed_run(cfg: PipelineConfig) -> dict:
    from flows.retrain import retrain

    since = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    state = retrain(config=cfg, return_state=True)
    wall = time.perf_counter() - t0
    until = datetime.now(timezone.utc)
    rows = state.result()  # raises if the run failed: a benchmark of a failed run means nothing
    all_runs = _task_runs(since, until)
    runs = [r for r in all_runs if r.start_time and r.end_time]  # cached ones never ran

    def span(r) -> tuple[float, float]:
        return r.start_time.timestamp(), r.end_time.timestamp()

    work = _union_seconds([span(r) for r in runs if r.name.startswith(WORK_TASKS)])
    tracking = sum(r.end_time.timestamp() - r.start_time.timestamp() for r in runs if r.name.startswith(TRACKING_TASKS))
    states = {}
    for r in all_runs:
        states[r.state_name] = states.get(r.state_name, 0) + 1
    return {"wall_s": round(wall, 2), "ml_work_s": round(work, 2), "overhead_s": round(wall - work, 2),
            "tracking_task_s": round(tracking, 2), "task_run_states": states, "rows": rows}


def measure_pipeline(cfg: PipelineConfig) -> dict:
    """Prefect server start-up, then the first run and the same run again with nothing changed."""
    from prefect import flow

    @flow(name="benchmark-warm-up")
    def warm_up() -> None:
        return None

    t0 = time.perf_counter()
    warm_up()
    startup = time.perf_counter() - t0
    print("pipeline: first run ...", flush=True)
    first = _timed_run(cfg)
    print("pipeline: cached re-run ...", flush=True)
    again = _timed_run(cfg)
    return {
        "prefect_server_startup_s": round(startup, 2),
        "first_run": {k: v for k, v in first.items() if k != "rows"},
        "cached_rerun": {k: v for k, v in again.items() if k != "rows"},
        "rows": first["rows"],
        "cached_over_first": round(again["wall_s"] / first["wall_s"], 4),
        "overhead_over_wall": round(first["overhead_s"] / first["wall_s"], 4),
    }
