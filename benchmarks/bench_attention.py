"""Which attention kernel a bf16 training step on a CPU should use: torch's fused kernel or plain matrix products.

    python -m benchmarks.bench_attention [--widths 32,48,64,96,128,160,192,256] [--train vader,drugs]

Torch's fused CPU attention (``scaled_dot_product_attention``'s flash kernel) is fast in fp32 and on long
sequences, but its bf16 backward is slow on short ones. Training therefore runs a bf16 CPU batch up to
``BaseModelSpec.cpu_bf16_math_attention_up_to`` tokens wide with SDPA's math backend
(``lora_pipeline.models.compute.training_attention``). Two measurements, both written to
``benchmarks/results/attention-kernel.json``:
- ``steps``: one LoRA training step of MiniLM (16 texts of VADER amazon, padded to each width), bf16 with the
  fused kernel and with the math backend, and fp32 for reference, interleaved round by round;
- ``train``: each domain of the named built-in datasets trained by ``train_adapter`` with each kernel rule, in
  this process, one after the other: train seconds and test macro-F1 (the quality the speed-up costs, if any).
The chosen precision must be bf16 on a CPU (avx512_bf16 or AMX); elsewhere the rule does nothing, and this
refuses to run. In ``train``, each pair trains the default rule first (it carries any first-run warm-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

from lora_pipeline.config import apply_runtime_env, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"fused": 0, "math": 10**6}  # name -> math_attention_up_to that forces it for every width


def step_times(widths: list[int], rounds: int, steps: int, overrides: list[str]) -> dict:
    """Median LoRA step seconds per width: bf16 with each kernel, and fp32 (torch's own choice)."""
    from benchmarks.bench_training import measure_step
    from lora_pipeline.data.datasets import resolve_data_path
    from lora_pipeline.data.prepare import prepare_data

    cfg = load_config(overrides=[*overrides, "data.domains=[amazon]"])
    work = REPO_ROOT / "benchmarks" / ".work" / "attention"
    splits = prepare_data(resolve_data_path(cfg.data.path, REPO_ROOT), cfg.data, cfg.split, work,
                          base=cfg.base).domains["amazon"]
    variants = {f"bf16 {name}": ("bf16", up_to) for name, up_to in KERNELS.items()} | {"fp32": ("fp32", 0)}
    out = {}
    for width in widths:
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, (precision, up_to) in variants.items():
                vcfg = load_config(overrides=[*overrides, f"runtime.precision={precision}", f"base.max_length={width}"])
                seconds[name] += measure_step(vcfg, splits, "lora", steps, 2, 1e-3, math_attention_up_to=up_to)["step_seconds"]
        median = {name: statistics.median(s) for name, s in seconds.items()}
        out[str(width)] = {"step_seconds_median": {n: round(m, 4) for n, m in median.items()},
                           "bf16_math_over_bf16_fused": round(median["bf16 math"] / median["bf16 fused"], 3),
                           "bf16_fastest_over_fp32": round(min(median["bf16 math"], median["bf16 fused"]) / median["fp32"], 3)}
        print(f"width {width}: {out[str(width)]}", flush=True)
    return out


def train_both(datasets: list[str], overrides: list[str]) -> dict:
    """Per domain: train seconds and test scores of the adapter trained under each kernel rule."""
    from lora_pipeline.data.datasets import fetch_dataset
    from lora_pipeline.data.prepare import prepare_data
    from lora_pipeline.evaluation.metrics import classification_metrics
    from lora_pipeline.models.adapters import load_adapter
    from lora_pipeline.models.bases import BASE_MODELS
    from lora_pipeline.provenance import training_inputs
    from lora_pipeline.training.trainer import train_adapter

    out = {}
    for dataset in datasets:
        data = fetch_dataset(dataset, REPO_ROOT / "data" / f"{dataset}.csv")
        cfg = load_config(overrides=overrides, values={"data.path": str(data)})
        inputs = training_inputs(cfg)
        work = REPO_ROOT / "benchmarks" / ".work" / "attention" / dataset
        spec = BASE_MODELS[cfg.base.name]
        rules = {"math up to the base's width (default)": spec.cpu_bf16_math_attention_up_to, "fused always": 0}
        for domain, splits in sorted(prepare_data(data, cfg.data, cfg.split, work, base=cfg.base).domains.items()):
            test = splits.read("test")
            for rule, up_to in rules.items():
                BASE_MODELS[cfg.base.name] = dataclasses.replace(spec, cpu_bf16_math_attention_up_to=up_to)
                try:
                    trained = train_adapter(splits, inputs, work / domain / str(up_to))
                finally:
                    BASE_MODELS[cfg.base.name] = spec
                adapter = load_adapter(trained.adapter_dir, compute=inputs.compute)
                scores = classification_metrics(test["label"].tolist(),
                                                adapter.predict(test["text"].tolist(), cfg.eval.batch_size), splits.labels)
                out.setdefault(f"{dataset}/{domain}", {})[rule] = {
                    "train_seconds": trained.train_seconds, "steps": trained.steps, "max_length": trained.max_length,
                    "precision": trained.precision, "test_macro_f1": round(scores["macro_f1"], 4),
                    "test_accuracy": round(scores["accuracy"], 4), "best_val_macro_f1": round(trained.best_val_macro_f1, 4)}
                print(f"{dataset}/{domain} {rule}: {out[f'{dataset}/{domain}'][rule]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="32,48,64,96,128,160,192,256", help="padded widths (0 values: skip)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant, width and round")
    parser.add_argument("--train", default="vader,drugs", help="built-in datasets to train both ways ('' : none)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "attention-kernel.json")
    args = parser.parse_args(argv)

    from benchmarks.bench_serving import machine
    from lora_pipeline.models.compute import compute_for

    cfg = load_config(overrides=args.overrides)
    apply_runtime_env(cfg)
    compute = compute_for(cfg.runtime)
    if (compute.device, compute.precision) != ("cpu", "bf16"):
        raise SystemExit(f"bench_attention measures bf16 training on a CPU; this run would be {compute}")
    out = {"benchmark": "bf16 CPU training: fused attention kernel vs math backend (benchmarks.bench_attention)",
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "chosen_precision": compute.precision, "overrides": args.overrides,
           "steps": step_times([int(w) for w in args.widths.split(",") if w and int(w)], args.rounds, args.steps,
                               args.overrides),
           "train": train_both([d for d in args.train.split(",") if d], args.overrides)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
