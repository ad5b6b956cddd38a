"""Parallel training, repeated: N tiny 4-domain runs with runtime.parallel_domains=2, and what a process per
training costs to start.

    python -m benchmarks.bench_reliability [--runs 20] [--out benchmarks/results/reliability.json]

Each run is a fresh project (its own MLflow store and cache), so every run trains all four domains, two at a
time, each in its own process. Counted: runs that exited 0, domains that failed (the parent run's
``failed_domains`` tag). Before the change to one process per training, two Trainers in two threads could
crash each other (issue 15). Start-up: a child process that only imports the training code, timed from
the parent; every training pays it once (it overlaps the other domain's work when domains run in parallel).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["split.max_train_rows=48", "split.max_val_rows=24", "split.max_test_rows=30", "train.max_steps=6",
        "train.batch_size=8", "eval.latency_samples=3", "runtime.parallel_domains=2"]


def import_training_code() -> float:
    import lora_pipeline.training.trainer  # noqa: F401 - what a training child imports before it trains

    return time.perf_counter()


def child_startup_seconds(repeats: int = 3) -> list[float]:
    from lora_pipeline.ops.isolation import call_in_child_process

    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()  # perf_counter is system-wide on Linux: comparable across processes
        call_in_child_process(import_training_code)
        out.append(round(time.perf_counter() - t0, 2))
    return out


def repeated_runs(runs: int, work: Path) -> dict:
    from mlflow import MlflowClient

    from lora_pipeline.cli import main
    from lora_pipeline.data.datasets import fetch_vader

    data = fetch_vader(REPO_ROOT / "data" / "vader.csv")
    results = []
    for i in range(runs):
        project = work / f"run-{i:02d}"
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir(parents=True)
        args = ["run", "--data", str(data), "--set", f"runtime.project_dir={project}"]
        for item in TINY:
            args += ["--set", item]
        t0 = time.perf_counter()
        code = main(args)
        wall = time.perf_counter() - t0
        client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("lora-pipeline")
        parents = [r for r in client.search_runs([experiment.experiment_id])
                   if "mlflow.parentRunId" not in r.data.tags]
        failed = [d for r in parents for d in r.data.tags.get("failed_domains", "").split(",") if d and d != "none"]
        results.append({"run": i, "exit_code": code, "failed_domains": failed, "wall_s": round(wall, 1)})
        print(f"run {i + 1}/{runs}: exit {code}, failed domains: {failed or 'none'}, {wall:.0f} s", flush=True)
    return {
        "runs": runs,
        "domains_per_run": 4,
        "parallel_domains": 2,
        "runs_exit_0": sum(r["exit_code"] == 0 for r in results),
        "domain_failures": sum(len(r["failed_domains"]) for r in results),
        "median_run_wall_s": statistics.median(r["wall_s"] for r in results),
        "per_run": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "reliability.json")
    args = parser.parse_args()
    from lora_pipeline.config import apply_runtime_env

    apply_runtime_env()
    startup = child_startup_seconds()
    print(f"child process start-up (spawn + imports): {startup} s", flush=True)
    result = {"child_startup_s": startup, **repeated_runs(args.runs, REPO_ROOT / "benchmarks" / ".work" / "reliability")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{result['runs_exit_0']}/{result['runs']} runs exited 0; {result['domain_failures']} domain failures; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
