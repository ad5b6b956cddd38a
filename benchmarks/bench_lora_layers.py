"""Which layers LoRA adapts, and what a training step costs for it: MiniLM, one batch, in one process.

    python -m benchmarks.bench_lora_layers [--lengths 48,256] [--rounds 3] [--steps 8]

The default adapts MiniLM's ``query`` and ``value`` (``BaseModelSpec.lora_targets``) in every layer without dropout
on LoRA's input; every linear layer of its blocks, ``lora.dropout=0.1`` and only the top layers
(``lora.layers_to_transform``) were tried as the default and not adopted. This
measures the training step of each variant below, and of a full fine-tune for reference, on the
same batch (VADER amazon, padded to each length: the cost depends on the shape, not the words), the
variants interleaved round by round so that a busy moment of this shared machine hits them all. Only
step time is measured here; quality is measured by ``benchmarks.bench_heldout`` (README, "Held-out
datasets", LoRA on every linear layer). Writes ``benchmarks/results/lora-layers.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

from lora_pipeline.config import apply_runtime_env, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_LINEAR = "[query,key,value,intermediate.dense,output.dense]"
VARIANTS = {  # name -> (method, config overrides); learning rate does not change a step's cost. First: the default
    "query,value, lora.dropout=0 (default)": ("lora", ["lora.target_modules=[query,value]", "lora.dropout=0"]),
    "query,value, lora.dropout=0.1": ("lora", ["lora.target_modules=[query,value]", "lora.dropout=0.1"]),
    "all linear, lora.dropout=0": ("lora", [f"lora.target_modules={ALL_LINEAR}", "lora.dropout=0"]),
    "all linear, lora.dropout=0.1": ("lora", [f"lora.target_modules={ALL_LINEAR}", "lora.dropout=0.1"]),
    # the backward pass ends at the lowest adapted layer: the frozen layers below need no gradient
    "query,value, top 3 of 6 layers": ("lora", ["lora.target_modules=[query,value]", "lora.dropout=0",
                                                "lora.layers_to_transform=[3,4,5]"]),
    "query,value, top 2 of 6 layers": ("lora", ["lora.target_modules=[query,value]", "lora.dropout=0",
                                                "lora.layers_to_transform=[4,5]"]),
    "full fine-tune": ("full", []),  # issue 14's reference: LoRA step / full step <= 0.6
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="48,256", help="padded sequence lengths, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each times every variant once")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "lora-layers.json")
    args = parser.parse_args(argv)

    base = load_config(overrides=[*args.overrides, "data.domains=[amazon]"])
    apply_runtime_env(base)
    from benchmarks.bench_serving import machine
    from benchmarks.bench_training import measure_step
    from lora_pipeline.data.datasets import resolve_data_path
    from lora_pipeline.data.prepare import prepare_data

    work = REPO_ROOT / "benchmarks" / ".work" / "lora-layers"
    splits = prepare_data(resolve_data_path(base.data.path, REPO_ROOT), base.data, base.split, work,
                          base=base.base).domains["amazon"]
    results = {}
    for length in [int(x) for x in args.lengths.split(",")]:
        seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        steps = {}
        for _ in range(args.rounds):
            for name, (method, overrides) in VARIANTS.items():
                cfg = load_config(overrides=[*args.overrides, *overrides, f"base.max_length={length}"])
                step = measure_step(cfg, splits, method, args.steps, args.warmup, learning_rate=1e-3)
                seconds[name] += step["step_seconds"]
                steps[name] = step
        median = {name: statistics.median(s) for name, s in seconds.items()}
        first, full = median[next(iter(VARIANTS))], median["full fine-tune"]
        results[str(length)] = {name: {
            "step_seconds_median": round(median[name], 4), "over_default": round(median[name] / first, 3),
            "over_full_finetune": round(median[name] / full, 3),
            "trainable_params": steps[name]["trainable_params"], "flops_per_step": steps[name]["flops_per_step"],
            "precision": steps[name]["precision"], "batch_size": steps[name]["batch_size"], "steps_timed": len(s),
        } for name, s in seconds.items()}
        print(f"length {length}: " + ", ".join(f"{n} {r['step_seconds_median']} s ({r['over_default']}x)"
                                               for n, r in results[str(length)].items()), flush=True)
    out = {"benchmark": "LoRA target layers: training step cost (benchmarks.bench_lora_layers)",
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "variants": VARIANTS, "rounds": args.rounds, "overrides": args.overrides, "by_length": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
