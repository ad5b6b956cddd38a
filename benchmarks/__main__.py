"""`make bench`: every figure of the comparison, measured in one run on this machine.

    python -m benchmarks [--config FILE] [--set KEY=VALUE ...] [--out-dir benchmarks/results]

In fp32 and in the precision runtime.precision chooses on this machine (bf16 where it is native), each
in its own fresh project:
1. pipeline   the full pipeline on the given config (default: the default config, all four domains),
              then again with nothing changed (benchmarks/bench_pipeline.py), and its models' quality;
2. step cost  LoRA vs full: seconds per step on one batch, peak memory, FLOP/s vs this machine's matmul
              in that precision;
3. serving    the run's champions, served mixed / switching / merged (benchmarks/bench_serving.py).
Then once, in the chosen precision:
4. full FT    each domain's base fine-tuned in full on the same splits (benchmarks/bench_training.py).
Writes ``latest.json`` and ``report.md`` + ``quality.png`` into --out-dir; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from lora_pipeline.config import apply_runtime_env, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="pipeline YAML config (default: lora_pipeline/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline config key, as for `lora-pipeline run`")
    parser.add_argument("--project", type=Path, default=REPO_ROOT / "benchmarks" / ".work" / "pipeline",
                        help="scratch project for the runs (emptied first)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="where latest.json, report.md and quality.png go")
    group = parser.add_argument_group("full fine-tune and step cost")
    group.add_argument("--full-lr", type=lambda v: [float(x) for x in v.split(",")], default=[5e-5, 1e-4, 3e-4],
                       help="learning rates tried for the full fine-tune, comma-separated; the best on validation "
                            "macro-F1 is scored on test (LoRA uses train.learning_rate)")
    group.add_argument("--step-timed", type=int, default=20, help="timed training steps per method (median)")
    group.add_argument("--step-warmup", type=int, default=3, help="untimed steps before them")
    group.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul that measures attainable FLOP/s (per dtype)")
    group = parser.add_argument_group("serving")
    group.add_argument("--serving-texts", type=int, default=512, help="one-text requests in the mixed-domain stream")
    group.add_argument("--serving-repeats", type=int, default=5, help="timed runs per mode (median)")
    group.add_argument("--latency-samples", type=int, default=100, help="batch-1 requests timed")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace, project: Path, precision: str | None = None):
    """The pipeline config of one benchmark project (optionally in one precision)."""
    overrides = [*args.overrides, f"runtime.project_dir={project}", "api.poll_interval_s=0"]
    if precision:
        overrides.append(f"runtime.precision={precision}")
    cfg = load_config(args.config, overrides)
    if cfg.data.path is None:  # the built-in set, fetched once into this checkout, not into every scratch project
        from lora_pipeline.data.datasets import resolve_data_path

        cfg = load_config(args.config, [*overrides, f"data.path={resolve_data_path(None, REPO_ROOT)}"])
    return cfg


def measure_precision(cfg, prepared, args, scratch: Path) -> dict:
    """Everything that depends on the precision, measured in ``cfg``'s: the pipeline (first run and
    cached re-run), its models' test quality read back from MLflow, LoRA and full step costs, serving."""
    from benchmarks.bench_pipeline import measure_pipeline
    from benchmarks.bench_serving import measure_serving
    from benchmarks.bench_training import step_cost
    from lora_pipeline.reporting.report import collect_comparison, latest_parent_run
    from mlflow import MlflowClient

    precision = cfg.runtime.precision
    print(f"[{precision}] pipeline ...", flush=True)
    pipeline = measure_pipeline(cfg)
    # Quality of the run's models, read back from MLflow (what the registry shows; the re-run's parent
    # run names the first run's domain runs, which it reused).
    client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    comparison = collect_comparison(client, latest_parent_run(client, cfg.tracking.experiment))
    quality = {d.domain: {m: {"macro_f1": round(v["macro_f1"], 4), "accuracy": round(v["accuracy"], 4)}
                          for m, v in d.metrics.items()} for d in comparison.domains}
    print(f"[{precision}] step cost: lora, full ...", flush=True)
    step_splits = prepared.domains[sorted(prepared.domains)[0]]
    steps = {method: step_cost(cfg, step_splits, method, args.step_timed, args.step_warmup,
                               cfg.train.learning_rate if method == "lora" else args.full_lr[0], scratch / precision)
             for method in ("lora", "full")}
    print(f"[{precision}] serving ...", flush=True)
    serving = measure_serving(cfg, args.serving_texts, cfg.api.max_batch_size, args.serving_repeats,
                              args.latency_samples)
    return {"pipeline": {k: v for k, v in pipeline.items() if k != "rows"}, "quality": quality,
            "adapter_bytes": {d.domain: int(d.efficiency["adapter_size_bytes"]) for d in comparison.domains},
            "train_step": {**steps, "step_domain": step_splits.domain}, "serving": serving}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    project = args.project.resolve()
    shutil.rmtree(project, ignore_errors=True)  # a first run must be a first run: no cache, no registry
    project.mkdir(parents=True)
    cfg = _config(args, project)
    apply_runtime_env(cfg)

    from benchmarks.bench_serving import machine
    from benchmarks.bench_training import full_finetune_quality, matmul_flops_per_s
    from benchmarks.report import ratios, write_report
    from lora_pipeline.data.prepare import prepare_data
    from lora_pipeline.models.adapters import lora_settings_for
    from lora_pipeline.models.bases import base_model_bytes
    from lora_pipeline.models.compute import compute_for

    # fp32 against the precision runtime.precision chooses here, each in its own fresh project.
    chosen = compute_for(cfg.runtime)
    precisions = list(dict.fromkeys(["fp32", chosen.precision]))
    # the runs' splits (deterministic)
    prepared = prepare_data(cfg.data.path, cfg.data, cfg.split, project / "prepared", base=cfg.base)
    by_precision = {p: measure_precision(_config(args, project / p, p), prepared, args, project / "step")
                    for p in precisions}
    matmul = {p: matmul_flops_per_s(args.matmul_size, dtype=p, device=chosen.device) for p in precisions}

    chosen_cfg = _config(args, project / chosen.precision, chosen.precision)
    full = full_finetune_quality(chosen_cfg, prepared, args.full_lr, project / "full-finetune")
    at_chosen = by_precision[chosen.precision]
    quality = {d: {**models, "full_finetune": {k: full[d][k] for k in ("macro_f1", "accuracy")}}
               for d, models in at_chosen["quality"].items()}

    result = {
        "benchmark": "lora-pipeline comparison (make bench)",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {"base_model": cfg.base.name, "domains": sorted(prepared.domains),
                   "rows_per_domain": {d: s.counts for d, s in sorted(prepared.domains.items())},
                   "epochs": cfg.train.epochs, "max_steps": cfg.train.max_steps, "batch_size": cfg.train.batch_size,
                   "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "learning_rate": cfg.train.learning_rate,
                            "target_modules": lora_settings_for(cfg.base.name, cfg.lora).target_modules},
                   "full_finetune_learning_rates": args.full_lr, "max_length": cfg.base.max_length,
                   "parallel_domains": cfg.runtime.parallel_domains, "overrides": args.overrides,
                   "group_by_length": cfg.train.group_by_length, "config_sha256": cfg.sha256()},
        # The headline figures are those of the chosen precision (what a default run uses on this machine);
        # by_precision holds every precision-dependent figure of each, fp32 first.
        "chosen_precision": chosen.precision,
        "device": chosen.device,
        "by_precision": by_precision,
        "quality": quality,
        "full_finetune": full,
        "size": {"adapter_bytes": at_chosen["adapter_bytes"], "base_bytes": base_model_bytes(cfg.base.name, cfg.base.cache_dir)},
        "train_step": at_chosen["train_step"],
        "matmul": matmul,
        "flops_counting": ("torch.utils.flop_counter.FlopCounterMode over the forward + backward of one "
                           "training step: matrix products only (2*M*N*K each, as executed: a LoRA step has no "
                           "frozen-weight gradients); element-wise ops and the optimizer update are not counted, "
                           "nor is torch's fused CPU attention kernel (no FLOP formula), which training uses in "
                           "fp32 and in bf16 above the base's math-attention width; the math backend's attention "
                           "products are counted (MiniLM, 16 x 48: ~3 % more FLOPs per step). "
                           "Achieved FLOP/s = FLOPs per step / median seconds per whole step (optimizer included). "
                           "Attainable = median FLOP/s of one torch.mm of two n x n matrices (2*n^3 FLOPs) in the "
                           "step's precision (bf16 autocast runs the matrix products in bf16)."),
        "serving": at_chosen["serving"],
        "pipeline": at_chosen["pipeline"],
    }
    result["ratios"] = ratios(result)
    result["bench_wall_s"] = round(time.perf_counter() - started, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(result, args.out_dir)
    print(f"wrote {args.out_dir / 'latest.json'} and {args.out_dir / 'report.md'}")
    print(json.dumps(result["ratios"], indent=2))
    return result


if __name__ == "__main__":
    main()
