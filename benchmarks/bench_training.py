"""Training cost: LoRA against a full fine-tune of the same base, and how busy each keeps this machine.

- ``full_finetune_quality``: every weight of the base trained on each domain's own splits (same data,
  schedule, batch and checkpoint choice as the LoRA adapter; learning rate picked on validation from
  a few), scored on the same test split.
- ``step_cost``: one optimizer step on the same fixed batch (``train.batch_size`` texts padded to
  ``base.max_length``), LoRA and full, each in its own process so that its peak memory is its own.
  FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward:
  it counts the matrix products (matmul/addmm/bmm/attention: 2*M*N*K each) that actually ran, so the
  LoRA step counts its frozen-weight forward and the activation gradients, but no frozen-weight
  gradients. Element-wise work (softmax, layer norm, GELU) and the optimizer are not counted.
- ``matmul_flops_per_s``: what this machine's matrix multiply reaches in fp32 and in bf16 (torch.mm of two
  square matrices), the denominator of "achieved / attainable" for training in that precision.

    python -m benchmarks.bench_training step --method lora --config-json cfg.json --splits-json splits.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from lora_pipeline.config import PipelineConfig


def full_finetune_quality(cfg: PipelineConfig, prepared, learning_rates: list[float], work_dir: Path) -> dict[str, dict]:
    """domain -> macro-F1, accuracy (test) and training cost of the full fine-tune. With several learning
    rates, each is trained and the one with the best validation macro-F1 is scored on test (the LoRA
    learning rate was chosen on validation too, so the full fine-tune gets the same chance)."""
    from lora_pipeline.evaluation.metrics import classification_metrics
    from lora_pipeline.provenance import training_inputs
    from lora_pipeline.training.trainer import train_full_model

    out = {}
    for domain, splits in sorted(prepared.domains.items()):
        best, tried = None, {}
        for lr in learning_rates:
            print(f"full fine-tune: {domain}, lr {lr} ...", flush=True)
            full = train_full_model(splits, training_inputs(cfg), work_dir / domain / str(lr), lr)
            tried[str(lr)] = {"best_val_macro_f1": round(full.best_val_macro_f1, 4), "train_seconds": full.train_seconds}
            if best is None or full.best_val_macro_f1 > best[1].best_val_macro_f1:
                best = (lr, full)
        lr, full = best
        test = splits.read("test")
        metrics = classification_metrics(test["label"].tolist(),
                                         full.model.predict(test["text"].tolist(), cfg.eval.batch_size), splits.labels)
        out[domain] = {"macro_f1": round(metrics["macro_f1"], 4), "accuracy": round(metrics["accuracy"], 4),
                       "learning_rate": lr, "train_seconds": full.train_seconds, "steps": full.steps,
                       "trainable_params": full.trainable_params, "best_val_macro_f1": round(full.best_val_macro_f1, 4),
                       "learning_rates_tried": tried}
        del best, full
    return out


def matmul_flops_per_s(n: int = 2048, repeats: int = 10, dtype: str = "fp32", device: str = "cpu") -> dict[str, float]:
    """Median FLOP/s of an n x n by n x n matrix product (2*n^3 FLOPs) in ``dtype`` on ``device``: the
    attainable peak that training in that precision is measured against."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = (torch.randn(n, n, device=device, dtype=torch_dtype) for _ in range(2))
    c = torch.empty(n, n, device=device, dtype=torch_dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    seconds = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    return {"matrix_size": n, "dtype": dtype, "flops_per_s": 2 * n**3 / statistics.median(seconds), "device": device,
            "torch_threads": torch.get_num_threads()}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux): VmRSS now, VmHWM its peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Start VmHWM afresh from the current RSS (Linux >= 4.0), so the peak is that of what follows.
    (getrusage's ru_maxrss cannot be reset, and survives fork + exec: it would report the parent's.)"""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_step(cfg: PipelineConfig, splits, method: str, steps: int, warmup: int, learning_rate: float,
                 math_attention_up_to: int | None = None) -> dict:
    """Seconds per optimizer step, FLOPs per step and peak memory of LoRA or full training on one batch.
    ``math_attention_up_to``: None = the base's ``cpu_bf16_math_attention_up_to``, as training uses it."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import set_seed

    from lora_pipeline.models import kind_of
    from lora_pipeline.models.adapters import build_lora_model, count_parameters
    from lora_pipeline.models.bases import check_lengths, get_spec, load_tokenizer
    from lora_pipeline.models.compute import autocast, compute_for, training_attention
    from lora_pipeline.models.encoder import BagOfWords
    from lora_pipeline.training.bag_of_words import choose_bag_of_words
    from lora_pipeline.training.trainer import resolve_max_length

    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    compute = compute_for(cfg.runtime)  # as training resolves it
    device = compute.device
    train = splits.read("train").head(cfg.train.batch_size)
    label_ids = {label: i for i, label in enumerate(splits.labels)}
    tokenizer = load_tokenizer(cfg.base.name, cfg.base.cache_dir)
    # 'auto': what training chooses for this data. A fixed base.max_length is the width asked for: training
    # would stop at the longest train text (amazon's, under 256 tokens), a benchmark of that width must not.
    check_lengths(cfg.base)
    max_length = (cfg.base.max_length if isinstance(cfg.base.max_length, int)
                  else resolve_max_length(tokenizer, splits, cfg.base).max_length)
    batch = tokenizer(train["text"].tolist(), truncation=True, max_length=max_length,
                      padding="max_length", return_tensors="pt")  # a fixed shape: the same work every step
    # (No whole-text ids: an encoder's bag-of-words term counts these; counting is the same work at any idf.)
    batch["labels"] = torch.tensor([label_ids[label] for label in train["label"]])
    batch = {k: v.to(device) for k, v in batch.items()}

    set_seed(cfg.train.seed)
    if method == "lora":
        model = build_lora_model(cfg.base.name, splits.labels, cfg.lora, cfg.base.cache_dir,
                                 bag_of_words=choose_bag_of_words(cfg.base.name, cfg.lora, splits).trained)
    else:
        model = kind_of(cfg.base.name).load_base(get_spec(cfg.base.name), splits.labels, cfg.base.cache_dir,
                                                 dropout=cfg.lora.base_dropout)
    model.to(device).train()
    if cfg.lora.bag_of_words_fit == "logistic":  # training fits the term before the first step, then keeps it fixed
        for module in model.modules():
            if isinstance(module, BagOfWords):
                module.weight.requires_grad_(False)
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=cfg.train.weight_decay)

    width = int(batch["input_ids"].shape[1])
    math_up_to = (get_spec(cfg.base.name).cpu_bf16_math_attention_up_to if math_attention_up_to is None
                  else math_attention_up_to)

    def step() -> None:
        # what the Trainer's bf16 switch does (the forward autocast, fp32 weights), and its attention kernel
        with autocast(compute), training_attention(compute, width, math_up_to):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rss_before = _status_bytes("VmRSS")
    peak_reset = _reset_peak_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    step_s = statistics.median(seconds)
    peak_rss = _status_bytes("VmHWM")

    with FlopCounterMode(display=False) as counter:  # forward + backward of one step, after the timing
        with autocast(compute), training_attention(compute, width, math_up_to):
            loss = model(**batch).loss
        loss.backward()
    flops = counter.get_total_flops()
    memory = ({"peak_gpu_allocated_bytes": torch.cuda.max_memory_allocated()} if device == "cuda" else {})
    return {
        "method": method, "device": device, "precision": compute.precision, "torch_threads": torch.get_num_threads(),
        "batch_size": int(batch["input_ids"].shape[0]), "sequence_length": int(batch["input_ids"].shape[1]),
        "trainable_params": trainable, "total_params": total,
        "step_seconds_median": round(step_s, 5), "step_seconds": [round(s, 5) for s in seconds],
        "flops_per_step": flops, "achieved_flops_per_s": flops / step_s,
        # Peak RSS while training (from the model loaded and the batch ready), and the RSS at that start.
        "peak_rss_bytes": peak_rss,
        "training_memory_bytes": peak_rss - rss_before,  # what training added: activations, grads, AdamW state
        "peak_rss_covers": "training steps only" if peak_reset else "whole process (VmHWM could not be reset)",
        "rss_before_training_bytes": rss_before,
        # What training itself holds on top of the model: weights' grads + AdamW's two moments (fp32).
        "grads_and_optimizer_state_bytes": trainable * 4 * 3,
        **memory,
    }


def step_cost(cfg: PipelineConfig, splits, method: str, steps: int, warmup: int, learning_rate: float,
              scratch: Path) -> dict:
    """:func:`measure_step` in a fresh process (its own peak memory); returns its JSON."""
    import subprocess
    from dataclasses import asdict

    scratch.mkdir(parents=True, exist_ok=True)
    config_json, splits_json, out = scratch / "config.json", scratch / "splits.json", scratch / f"step-{method}.json"
    config_json.write_text(cfg.model_dump_json(exclude={"api"}))
    splits_json.write_text(json.dumps(asdict(splits)))
    subprocess.run([sys.executable, "-m", "benchmarks.bench_training", "step", "--method", method,
                    "--config-json", str(config_json), "--splits-json", str(splits_json), "--steps", str(steps),
                    "--warmup", str(warmup), "--learning-rate", str(learning_rate), "--out", str(out)],
                   cwd=REPO_ROOT, check=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one method's training step cost, in this process")
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step")
    step.add_argument("--method", choices=["lora", "full"], required=True)
    step.add_argument("--config-json", type=Path, required=True, help="the resolved PipelineConfig")
    step.add_argument("--splits-json", type=Path, required=True, help="the DomainSplits whose train split gives the batch")
    step.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    step.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    step.add_argument("--learning-rate", type=float, required=True)
    step.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from lora_pipeline.config import apply_runtime_env
    from lora_pipeline.data.prepare import DomainSplits

    cfg = PipelineConfig.model_validate_json(args.config_json.read_text())
    apply_runtime_env(cfg)
    splits = DomainSplits(**json.loads(args.splits_json.read_text()))
    result = measure_step(cfg, splits, args.method, args.steps, args.warmup, args.learning_rate)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
