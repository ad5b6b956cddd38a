"""Evaluate one generation domain on its test split: the adapter, the bare base (zero-shot and few-shot, same
prompt) and a classical extractive baseline (the input's lead sentence), scored with ROUGE-1/2/L (rouge-score,
Porter stemming, F-measure) against the reference.

Plus efficiency: latency per text and per generated token at batch 1, and tokens/s at the generation batch,
measured on the saved adapter reloaded from disk (the artifact that gets registered).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from rouge_score import rouge_scorer

from lora_pipeline.config import EvaluationInputs
from lora_pipeline.data.prepare import DomainSplits
from lora_pipeline.evaluation.evaluate import DomainEvaluation
from lora_pipeline.models.adapters import load_adapter
from lora_pipeline.models.compute import autocast
from lora_pipeline.ops.compute_slots import EVALUATION, takes_turns

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
SAMPLES_SHOWN = 10  # rows of the samples table (input, reference, base output, adapter output)


def rouge_rows(references: list[str], outputs: list[str], rouge_type: str = "rougeL") -> list[float]:
    """Per row, the ROUGE F-measure of the output against its reference."""
    return [_SCORER.score(ref, out)[rouge_type].fmeasure for ref, out in zip(references, outputs)]


def generation_metrics(references: list[str], outputs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures and the mean output length in words."""
    scores = [_SCORER.score(ref, out) for ref, out in zip(references, outputs)]
    metrics = {t: float(np.mean([s[t].fmeasure for s in scores])) if scores else 0.0 for t in ROUGE_TYPES}
    metrics["mean_output_words"] = float(np.mean([len(o.split()) for o in outputs])) if outputs else 0.0
    return metrics


def lead_sentence(text: str) -> str:
    """The classical extractive baseline: the input's first sentence."""
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def markdown_cell(value: str, limit: int = 300) -> str:
    """``value`` on one line, its pipes escaped, cut to ``limit`` characters: a markdown table cell."""
    value = " ".join(str(value).split()).replace("|", "\\|")
    return value if len(value) <= limit else value[:limit] + " ..."


def _samples_markdown(domain: str, rows: pd.DataFrame) -> str:
    cell = markdown_cell
    lines = [f"# {domain}: samples", "", "| input | reference | zero-shot base | adapter |", "|---|---|---|---|"]
    lines += [f"| {cell(r.text)} | {cell(r.target)} | {cell(r.base_pred)} | {cell(r.adapter_pred)} |"
              for r in rows.itertuples()]
    return "\n".join(lines) + "\n"


@takes_turns(EVALUATION)  # small CPU machines: not beside a training (ops/compute_slots.py)
def evaluate_generation(splits: DomainSplits, adapter_dir: str | Path, inputs: EvaluationInputs,
                        out_dir: str | Path) -> DomainEvaluation:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test, train = splits.read("test"), splits.read("train")
    texts, references = test["text"].tolist(), test["target"].tolist()

    adapter = load_adapter(adapter_dir, inputs.base.cache_dir, inputs.compute)
    kind, batch_size = adapter.kind, adapter.kind.prediction_batch_size(inputs)
    with autocast(inputs.compute):
        kind.generate(adapter, texts[:1], 1)  # warm-up: first call pays one-off allocation costs
        started = time.perf_counter()
        adapter_out, lengths = kind.generate(adapter, texts, batch_size)
        batch_seconds = time.perf_counter() - started
        timings, tokens = [], []
        for text in texts[: inputs.eval.latency_samples]:
            t0 = time.perf_counter()
            _, [n] = kind.generate(adapter, [text], 1)
            timings.append((time.perf_counter() - t0) * 1000)
            tokens.append(max(1, n))
        baselines = kind.baseline_predictions(adapter, texts, [], train, inputs)
    predictions = {"adapter": adapter_out, **baselines, "lead": [lead_sentence(t) for t in texts]}
    metrics = {name: generation_metrics(references, outputs) for name, outputs in predictions.items()}

    result = DomainEvaluation(
        domain=splits.domain,
        labels=[],
        n_test=len(texts),
        metrics=metrics,
        latency_p50_ms=round(float(np.percentile(timings, 50)), 3),
        latency_p95_ms=round(float(np.percentile(timings, 95)), 3),
        throughput_per_s=round(len(texts) / batch_seconds, 3),
        artifacts_dir=str(out_dir),
        precision=inputs.compute.precision,
        device=inputs.compute.device,
        metric="rougeL",
        classical="lead",
        efficiency={"ms_per_token": round(float(np.sum(timings) / np.sum(tokens)), 3),
                    "tokens_per_s": round(sum(lengths) / batch_seconds, 2),
                    "mean_new_tokens": round(float(np.mean(lengths)), 2) if lengths else 0.0},
    )
    (out_dir / "evaluation.json").write_text(json.dumps(asdict(result), indent=2))
    table = pd.DataFrame({"text": texts, "target": references, **{f"{k}_pred": v for k, v in predictions.items()}})
    table.to_json(out_dir / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
    (out_dir / "samples.md").write_text(_samples_markdown(splits.domain, table.head(SAMPLES_SHOWN)))
    return result
