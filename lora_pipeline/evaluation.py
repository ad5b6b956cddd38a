"""Evaluate one domain on its test split: the adapter, the zero-shot base and a TF-IDF baseline.

Plus efficiency: latency p50/p95 at batch 1 and throughput at the evaluation batch size, both measured
on the saved adapter reloaded from disk (the artifact that gets registered).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from lora_pipeline.adapters import LoadedAdapter, load_adapter
from lora_pipeline.base_models import get_spec, load_encoder, load_tokenizer
from lora_pipeline.config import PipelineConfig
from lora_pipeline.data import DomainSplits
from lora_pipeline.generative import PromptFormat, build_prompt, pick_examples, score_labels
from lora_pipeline.metrics import classification_metrics, plot_confusion_matrix

MODELS = ("adapter", "base", "tfidf")  # plus "fewshot" for generative (causal) bases


@dataclass(frozen=True)
class DomainEvaluation:
    domain: str
    labels: list[str]
    n_test: int
    metrics: dict[str, dict]  # model ("adapter" | "base" | "tfidf" [| "fewshot"]) -> classification_metrics(...)
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_per_s: float
    artifacts_dir: str  # evaluation.json, predictions.jsonl, confusion_<model>.png

    def macro_f1(self, model: str) -> float:
        return self.metrics[model]["macro_f1"]


@torch.inference_mode()
def _embed(encoder, tokenizer, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Mean-pooled, L2-normalised token embeddings: how all-MiniLM-L6-v2 makes sentence vectors."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt")
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def predict_zero_shot(texts: list[str], labels: list[str], cfg: PipelineConfig) -> list[str]:
    """No training: each text gets the label whose description embedding is most cosine-similar."""
    encoder, tokenizer = load_encoder(cfg.base.name).eval(), load_tokenizer(cfg.base.name)
    descriptions = [cfg.eval.label_descriptions.get(label, label) for label in labels]
    label_vecs = _embed(encoder, tokenizer, descriptions, cfg.base.max_length, cfg.eval.batch_size)
    text_vecs = _embed(encoder, tokenizer, texts, cfg.base.max_length, cfg.eval.batch_size)
    return [labels[i] for i in (text_vecs @ label_vecs.T).argmax(axis=1)]


def predict_prompted(adapter: LoadedAdapter, texts: list[str], labels: list[str], cfg: PipelineConfig,
                     examples: list[tuple[str, str]] = ()) -> list[str]:
    """The causal base without its adapter (peft's "__base__" rows, no second copy of the base loaded):
    the adapter's prompt (zero-shot), optionally with labelled examples first (few-shot)."""
    fmt = PromptFormat(cfg.generative.instruction, labels, cfg.base.max_length)
    prompts = [build_prompt(adapter.tokenizer, fmt, text, examples) for text in texts]
    probs = score_labels(adapter.model, adapter.tokenizer, prompts, [labels] * len(texts),
                         adapter_names=["__base__"] * len(texts), batch_size=cfg.generative.score_batch_size)
    return [labels[int(p.argmax())] for p in probs]


def predict_tfidf(train: pd.DataFrame, texts: list[str]) -> list[str]:
    """Classical baseline trained on the same train split as the adapter."""
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=2000)
    )
    model.fit(train["text"], train["label"])
    return model.predict(texts).tolist()


def evaluate_domain(
    splits: DomainSplits, adapter_dir: str | Path, cfg: PipelineConfig, out_dir: str | Path
) -> DomainEvaluation:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = splits.read("test")
    texts, truth, labels = test["text"].tolist(), test["label"].tolist(), splits.labels

    causal = get_spec(cfg.base.name).kind == "causal"
    batch_size = cfg.generative.score_batch_size if causal else cfg.eval.batch_size
    adapter = load_adapter(adapter_dir, cfg.base.cache_dir)
    adapter.predict(texts[:1])  # warm-up: first call pays one-off allocation costs
    started = time.perf_counter()
    adapter_pred = adapter.predict(texts, batch_size=batch_size)
    throughput = len(texts) / (time.perf_counter() - started)
    timings = []
    for text in texts[: cfg.eval.latency_samples]:
        t0 = time.perf_counter()
        adapter.predict([text], batch_size=1)
        timings.append((time.perf_counter() - t0) * 1000)

    train = splits.read("train")
    predictions = {
        "adapter": adapter_pred,
        "base": predict_prompted(adapter, texts, labels, cfg) if causal else predict_zero_shot(texts, labels, cfg),
        "tfidf": predict_tfidf(train, texts),
    }
    if causal:
        examples = pick_examples(train["text"].tolist(), train["label"].tolist(), cfg.generative.few_shot_k,
                                 cfg.split.seed)
        predictions["fewshot"] = predict_prompted(adapter, texts, labels, cfg, examples)
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
    )
    (out_dir / "evaluation.json").write_text(json.dumps(asdict(result), indent=2))
    pd.DataFrame({"text": texts, "label": truth, **{f"{k}_pred": v for k, v in predictions.items()}}).to_json(
        out_dir / "predictions.jsonl", orient="records", lines=True, force_ascii=False
    )
    for name in predictions:
        plot_confusion_matrix(metrics[name]["confusion_matrix"], labels, f"{splits.domain}: {name}",
                              out_dir / f"confusion_{name}.png")
    return result
