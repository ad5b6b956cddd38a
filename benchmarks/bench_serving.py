"""Serving benchmark: how much does serving many adapters on one base cost, measured on this machine.

Three ways to answer the same mixed-domain stream of texts. Each text is its own request, and all of
them go through the server's batching code (``MicroBatcher``, up to ``--batch-size`` texts per batch):
- mixed:     the server's path (ChampionService.predict): every batch is one forward pass whose rows
             go through their own domain's adapter (peft ``adapter_names``, the LoRA product batched across
             adapters by ``lora_pipeline.serving.stacked_lora``);
- mixed_peft_loop: the same, through peft's own per-adapter loop (what stacking saves);
- switching: the usual alternative: per batch, one forward per domain after switching the active adapter;
- merged:    the ceiling: one adapter merged into the base (plain model, no LoRA work), serving one domain.
Plus latency at batch 1: through the pool in this process, and over HTTP to a `lora-pipeline serve` process.

    python -m benchmarks.bench_serving [--project DIR] [--texts 512] [--batch-size 32]

With no trained champions in ``--project``, it first trains tiny adapters (a few steps per domain) with
the real flow: throughput does not depend on how well an adapter was trained. Writes
benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from lora_pipeline.config import PipelineConfig, apply_runtime_env, load_config

RESULTS = REPO_ROOT / "benchmarks" / "results" / "serving.json"
# Enough for every stage to be real, small enough to train all four domains in ~1.5 min on 2 cores.
TINY_TRAINING = ["split.max_train_rows=96", "split.max_val_rows=24", "split.max_test_rows=40", "train.max_steps=12",
                 "train.batch_size=8", "eval.latency_samples=3", "promotion.min_gain_over_base=-1",
                 "promotion.max_loss_to_tfidf=1"]


def bench_config(project: Path) -> PipelineConfig:
    return load_config(overrides=[f"runtime.project_dir={project}", *TINY_TRAINING, "api.poll_interval_s=0"])


def ensure_champions(cfg: PipelineConfig) -> None:
    if (cfg.project_dir / "mlflow.db").is_file():
        from mlflow import MlflowClient

        client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
        if any("champion" in m.aliases for m in client.search_registered_models()):
            return
    from flows.retrain import retrain

    print(f"training tiny champions in {cfg.project_dir} (one-off) ...", flush=True)
    retrain(config=cfg)


def workload(cfg: PipelineConfig, domains: list[str], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (domain, text) pairs in random domain order, texts from each domain's own data."""
    import pandas as pd

    from lora_pipeline.data.datasets import resolve_data_path

    data = pd.read_csv(resolve_data_path(cfg.data.path, cfg.project_dir), dtype=str, keep_default_na=False)
    rng = random.Random(seed)
    by_domain = {d: data.loc[data["domain"] == d, "text"].tolist() for d in domains}
    return [(d, rng.choice(by_domain[d])) for d in (rng.choice(domains) for _ in range(n))]


def timed_interleaved(modes: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per run of each mode, after one warm-up each. The modes take turns within every repeat,
    so a slow spell of a shared machine hits all of them alike instead of biasing one."""
    for fn in modes.values():
        fn()
    runs: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    return runs


def through_batcher(runner, run_batch, requests: list, batch_size: int, wait_ms: float) -> tuple[list, dict]:
    """Every request (one item each) submitted at once to the server's MicroBatcher; results in order.

    ``runner`` (an ``asyncio.Runner``) keeps one event loop, and so one batch worker thread, for every run, as a
    server's loop does: a fresh loop per run starts a fresh thread whose first forward passes are slower, which
    measured 0.86 for mixed/merged against 0.91 on one loop (0.98 called directly) in one interleaved run."""
    import asyncio

    from lora_pipeline.serving.batching import MicroBatcher

    async def go():
        batcher = MicroBatcher(run_batch, batch_size, wait_ms)
        try:
            results = await asyncio.gather(*(batcher.submit([r]) for r in requests))
        finally:
            await batcher.stop()
        return [r[0] for r in results], dict(batcher.stats)

    return runner.run(go())


def mixed_batch(service):
    return lambda items: [p.label for p in service.predict(items)]


def peft_loop_batch(service):
    from lora_pipeline.serving.stacked_lora import peft_loop

    def run(items):
        with service.pool.lock, peft_loop(service.pool.model):
            return [p.label for p in service.predict(items)]

    return run


def switching_batch(service):
    """One batch: group rows by domain, switch the active adapter, one forward per group (encoder bases)."""
    import torch

    from lora_pipeline.models.compute import autocast, model_device
    from lora_pipeline.models.encoder import padded_batches

    def run(items):
        pool, served = service.pool, service.served
        labels = [None] * len(items)
        try:
            with torch.inference_mode(), autocast(pool.compute):
                for domain in sorted({d for d, _ in items}):
                    rows = [(i, text) for i, (d, text) in enumerate(items) if d == domain]
                    adapter = served[domain]
                    pool.model.set_adapter(adapter.slot)
                    meta = pool.meta[adapter.slot]
                    [(order, batch)] = padded_batches(pool.tokenizer, [t for _, t in rows],
                                                      [meta.max_length] * len(rows), len(rows),
                                                      model_device(pool.model),
                                                      [meta.bag_of_words_reads] * len(rows))  # one forward per domain
                    logits = pool.model(**batch).logits[:, : len(adapter.labels)]
                    for j, k in zip(order, logits.argmax(-1).tolist()):
                        labels[rows[j][0]] = adapter.labels[k]
        finally:
            pool.model.set_adapter(pool.idle)  # the pool's own idle adapter again
        return labels

    return run


def merged_batch(model, tokenizer, max_length, compute, term_reads: str):
    import torch

    from lora_pipeline.models.compute import autocast, model_device
    from lora_pipeline.models.encoder import padded_batches

    def run(items):
        predicted = [0] * len(items)
        with torch.inference_mode(), autocast(compute):
            for rows, batch in padded_batches(tokenizer, [text for _, text in items], [max_length] * len(items),
                                              len(items), model_device(model),
                                              [term_reads] * len(items)):  # as the pool cuts, one forward
                for i, k in zip(rows, model(**batch).logits.argmax(-1).tolist()):
                    predicted[i] = k
        return predicted

    return run


def percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"p50_ms": round(pick(0.50), 2), "p95_ms": round(pick(0.95), 2), "n": len(ms)}


def latency_http(cfg: PipelineConfig, items, samples: int) -> dict[str, float]:
    """Batch-1 latency over HTTP: a real `lora-pipeline serve` process, this process as the client."""
    import subprocess

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    overrides = [f"runtime.project_dir={cfg.project_dir}", "api.poll_interval_s=0", f"api.port={port}",
                 f"runtime.device={cfg.runtime.device}", f"runtime.precision={cfg.runtime.precision}",
                 # the data whose champions are served (their registered names come from it)
                 *([f"data.path={cfg.data.path}"] if cfg.data.path else []),
                 *([f"data.name={cfg.data.name}"] if cfg.data.name else [])]
    server = subprocess.Popen([sys.executable, "-m", "lora_pipeline.cli", "serve",
                               *[x for o in overrides for x in ("--set", o)]],
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/health").json()["domains"] > 0:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"`lora-pipeline serve` did not come up (exit code {server.poll()})")
                time.sleep(0.2)
            timings = []
            for i in range(samples + 3):
                domain, text = items[i % len(items)]
                t0 = time.perf_counter()
                response = client.post("/predict", json={"domain": domain, "texts": [text]})
                elapsed = (time.perf_counter() - t0) * 1000
                response.raise_for_status()
                if i >= 3:  # the first requests start the batcher and warm the connection
                    timings.append(elapsed)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {**percentiles(timings), "batch_wait_ms": cfg.api.batch_wait_ms}


def measure_serving(cfg: PipelineConfig, texts: int, batch_size: int, repeats: int, latency_samples: int) -> dict:
    """Throughput of mixed / switching / merged through the MicroBatcher, and batch-1 latency, on the
    champions of ``cfg``'s registry."""
    import asyncio

    import torch

    from lora_pipeline.models.adapters import load_adapter
    from lora_pipeline.models.compute import store_for_autocast
    from lora_pipeline.serving.service import ChampionService

    service = ChampionService(cfg)
    report = service.reload()
    domains = sorted(service.served)
    if not domains:
        raise RuntimeError(f"serving benchmark: no champion to serve in {cfg.tracking_uri} "
                           f"(load failures: {report.failed or 'none'}; no domain earned `champion`?)")
    items = workload(cfg, domains, texts)
    n, bs, wait = len(items), batch_size, cfg.api.batch_wait_ms
    print(f"serving {domains} on {cfg.base.name}; {n} texts, batch {bs}, torch threads {torch.get_num_threads()}",
          flush=True)

    first = service.served[domains[0]]
    merged = load_adapter(service.fetch_adapter(first.model_name, first.version), compute=service.compute)
    # Stored as the pool stores its base (bf16 Linear weights under bf16): the ceiling gets the same saving.
    merged_model = store_for_autocast(merged.model.merge_and_unload().eval(), service.compute)
    modes = {"mixed": mixed_batch(service), "mixed_peft_loop": peft_loop_batch(service),
             "switching": switching_batch(service),
             "merged": merged_batch(merged_model, merged.tokenizer, merged.meta.max_length, service.compute,
                                   merged.meta.bag_of_words_reads)}
    batch_stats = {}
    runner = asyncio.Runner()

    def timed(name):
        def run():
            batch_stats[name] = through_batcher(runner, modes[name], items, bs, wait)[1]
        return run

    with runner:
        runs = timed_interleaved({name: timed(name) for name in modes}, repeats)
        mixed_labels, switching_labels = (through_batcher(runner, modes[m], items, bs, wait)[0]
                                          for m in ("mixed", "switching"))
    mixed_s, loop_s, switch_s, merged_s = (statistics.median(runs[m])
                                           for m in ("mixed", "mixed_peft_loop", "switching", "merged"))
    agreement = sum(a == b for a, b in zip(mixed_labels, switching_labels)) / len(items)

    pool_ms = []
    for domain, text in items[:latency_samples]:
        t0 = time.perf_counter()
        service.predict([(domain, text)])
        pool_ms.append((time.perf_counter() - t0) * 1000)

    return {
        "setup": {"base_model": cfg.base.name, "domains": domains, "texts": n, "batch_size": bs,
                  "batch_wait_ms": wait, "repeats": repeats, "max_length": cfg.base.max_length,
                  "precision": service.compute.precision, "device": service.compute.device,
                  "project": str(cfg.project_dir), "merged_domain": domains[0],
                  "torch_threads": torch.get_num_threads()},
        "throughput_texts_per_s": {
            "mixed_adapters_one_forward": round(n / mixed_s, 1),
            "mixed_through_peft_loop": round(n / loop_s, 1),
            "switch_adapter_per_domain": round(n / switch_s, 1),
            "single_merged_model": round(n / merged_s, 1),
        },
        "batcher_stats_last_run": batch_stats,  # texts per forward pass the MicroBatcher formed
        "seconds_per_run": {mode: [round(x, 3) for x in seconds] for mode, seconds in runs.items()},
        "ratios": {
            "mixed_over_merged": round(merged_s / mixed_s, 3),
            "peft_loop_over_merged": round(merged_s / loop_s, 3),
            "mixed_over_switching": round(switch_s / mixed_s, 3),
        },
        # Share of texts with the same label either way (a correctness check): 1.0 in fp32; under bf16 a near-tie
        # may flip, since the two paths pad and round differently.
        "mixed_and_switching_agreement": round(agreement, 4),
        "latency_batch1": {"pool": percentiles(pool_ms), "http": latency_http(cfg, items, latency_samples)},
    }


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=REPO_ROOT / "benchmarks" / ".work" / "serving",
                        help="project whose champions are served (trained tiny if it has none)")
    parser.add_argument("--texts", type=int, default=512, help="texts in the mixed-domain stream")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (median reported)")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    args.project.mkdir(parents=True, exist_ok=True)
    cfg = bench_config(args.project.resolve())
    apply_runtime_env(cfg)
    ensure_champions(cfg)
    result = {"benchmark": "serving", "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(),
              **measure_serving(cfg, args.texts, args.batch_size, args.repeats, args.latency_samples)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
