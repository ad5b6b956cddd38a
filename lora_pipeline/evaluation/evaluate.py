"""Evaluate one domain on its test split: the adapter, the kind's baselines (zero-shot base, few-shot...)
and the classical TF-IDF baseline (``classical.py``).

Plus efficiency: latency p50/p95 at batch 1 and throughput at the evaluation batch size, both measured
on the saved adapter reloaded from disk (the artifact that gets registered).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lora_pipeline.config import EvaluationInputs
from lora_pipeline.data.prepare import DomainSplits
from lora_pipeline.evaluation.classical import fit_tfidf
from lora_pipeline.evaluation.metrics import classification_metrics, plot_confusion_matrix
from lora_pipeline.models.adapters import load_adapter
from lora_pipeline.models.compute import autocast
from lora_pipeline.ops.compute_slots import EVALUATION, takes_turns


@dataclass(frozen=True)
class DomainEvaluation:
    domain: str
    labels: list[str]
    n_test: int
    metrics: dict[str, dict]  # model ("adapter" | "tfidf" | the kind's baselines) -> classification_metrics(...)
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_per_s: float
    artifacts_dir: str  # evaluation.json, predictions.jsonl, confusion_<model>.png (generation: samples.md)
    precision: str = "fp32"  # what the adapter and the base were scored and timed in (runtime.precision, resolved)
    device: str = "cpu"
    metric: str = "macro_f1"  # the task's own metric (generation: rougeL); promotion.metric may pick another
    classical: str = "tfidf"  # the classical baseline the adapter must not lose to (generation: lead)
    efficiency: dict[str, float] = field(default_factory=dict)  # task-specific figures (generation: ms_per_token...)


@takes_turns(EVALUATION)  # small CPU machines: not beside a training (ops/compute_slots.py)
def evaluate_domain(splits: DomainSplits, adapter_dir: str | Path, inputs: EvaluationInputs,
                    out_dir: str | Path) -> DomainEvaluation:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = splits.read("test")
    texts, truth, labels = test["text"].tolist(), test["label"].tolist(), splits.labels

    adapter = load_adapter(adapter_dir, inputs.base.cache_dir, inputs.compute)
    batch_size = adapter.kind.prediction_batch_size(inputs)
    adapter.predict(texts[:1])  # warm-up: first call pays one-off allocation costs
    started = time.perf_counter()
    adapter_pred = adapter.predict(texts, batch_size=batch_size)
    throughput = len(texts) / (time.perf_counter() - started)
    timings = []
    for text in texts[: inputs.eval.latency_samples]:
        t0 = time.perf_counter()
        adapter.predict([text], batch_size=1)
        timings.append((time.perf_counter() - t0) * 1000)

    train = splits.read("train")
    with autocast(inputs.compute):  # the base is scored in the adapter's precision
        baselines = adapter.kind.baseline_predictions(adapter, texts, labels, train, inputs)
    tfidf = fit_tfidf(train, splits.read("val"), inputs.eval)
    predictions = {"adapter": adapter_pred, **baselines, "tfidf": tfidf.predict(texts).tolist()}
    metrics = {name: classification_metrics(truth, pred, labels) for name, pred in predictions.items()}

    result = DomainEvaluation(
        domain=splits.domain,
        labels=labels,
        n_test=len(texts),
        metrics=metrics,
        latency_p50_ms=round(float(np.percentile(timings, 50)), 3),
        latency_p95_ms=round(float(np.percentile(timings, 95)), 3),
        throughput_per_s=round(throughput, 2),
        artifacts_dir=str(out_dir),
        precision=inputs.compute.precision,
        device=inputs.compute.device,
        efficiency={"tfidf_C": float(tfidf.named_steps["logreg"].C)},  # what the validation split picked
    )
    (out_dir / "evaluation.json").write_text(json.dumps(asdict(result), indent=2))
    pd.DataFrame({"text": texts, "label": truth, **{f"{k}_pred": v for k, v in predictions.items()}}).to_json(
        out_dir / "predictions.jsonl", orient="records", lines=True, force_ascii=False
    )
    for name in predictions:
        plot_confusion_matrix(metrics[name]["confusion_matrix"], labels, f"{splits.domain}: {name}",
                              out_dir / f"confusion_{name}.png")
    return result
