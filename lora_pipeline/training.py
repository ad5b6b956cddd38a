"""Train one domain's LoRA adapter with the HF Trainer: setup -> train -> save.

The best checkpoint by validation macro-F1 is kept (``load_best_model_at_end``); only the adapter,
its head and the label map are saved. ``train_full_model`` runs the same recipe with every weight of the
base trained: the benchmarks' comparison point, never registered.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from lora_pipeline.adapters import (AdapterMeta, LoadedAdapter, adapter_size_bytes, build_lora_model, count_parameters,
                                    save_adapter)
from lora_pipeline.base_models import get_spec, load_classifier_base, load_tokenizer
from lora_pipeline.generative import IGNORE, PromptFormat, build_prompt, training_example
from lora_pipeline.config import PipelineConfig
from lora_pipeline.data import DomainSplits
from lora_pipeline.errors import ConfigError
from lora_pipeline.metrics import classification_metrics

# Domains train in parallel threads; the global RNG is seeded and consumed for adapter init under this
# lock so that the initial weights are the same whatever the thread interleaving.
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrainedAdapter:
    domain: str
    adapter_dir: str
    labels: list[str]
    train_seconds: float
    steps: int
    trainable_params: int
    total_params: int
    adapter_size_bytes: int
    best_val_macro_f1: float
    trained_on: str  # host:pid of the process that trained it (a Dask worker, or this process)


class _EncodedTexts(torch.utils.data.Dataset):
    def __init__(self, tokenizer, texts: list[str], labels: list[int], max_length: int):
        self.encodings = tokenizer(texts, truncation=True, max_length=max_length)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item


def _encode(splits: DomainSplits, split: str, tokenizer, max_length: int) -> _EncodedTexts:
    df = splits.read(split)
    label_ids = {label: i for i, label in enumerate(splits.labels)}
    return _EncodedTexts(tokenizer, df["text"].tolist(), [label_ids[l] for l in df["label"]], max_length)


def _schedule(n_train: int, cfg: PipelineConfig) -> tuple[int, int]:
    """(total optimizer steps, evaluate/save every N steps): once per epoch, or once at the end."""
    steps_per_epoch = max(1, math.ceil(n_train / cfg.train.batch_size))
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(cfg.train.epochs * steps_per_epoch)
    return total, min(steps_per_epoch, total)


def _generative_dataset(splits: DomainSplits, split: str, tokenizer, fmt: PromptFormat) -> list[dict]:
    df = splits.read(split)
    return [training_example(tokenizer, build_prompt(tokenizer, fmt, text), label)
            for text, label in zip(df["text"], df["label"])]


def _fit(model, splits: DomainSplits, cfg: PipelineConfig, output_dir: Path, learning_rate: float):
    """Train ``model`` on the domain's train split with the HF Trainer, evaluating on val once per epoch
    and keeping the best checkpoint. Returns (trainer, tokenizer, train seconds)."""
    causal = get_spec(cfg.base.name).kind == "causal"
    tokenizer = load_tokenizer(cfg.base.name, cfg.base.cache_dir)
    if causal:  # prompt listing the labels -> " label"; the loss is on the answer tokens only
        fmt = PromptFormat(cfg.generative.instruction, splits.labels, cfg.base.max_length)
        train_ds = _generative_dataset(splits, "train", tokenizer, fmt)
        val_ds = _generative_dataset(splits, "val", tokenizer, fmt)
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    else:
        train_ds = _encode(splits, "train", tokenizer, cfg.base.max_length)
        val_ds = _encode(splits, "val", tokenizer, cfg.base.max_length)
        collator = DataCollatorWithPadding(tokenizer)  # dynamic padding: short texts stay short
    total_steps, eval_every = _schedule(len(train_ds), cfg)
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        max_steps=total_steps,
        per_device_train_batch_size=cfg.train.batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size if not causal else cfg.generative.score_batch_size,
        learning_rate=learning_rate,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_ratio,  # a float < 1 is a share of the total steps
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        # Causal: the validation loss of the answer tokens picks the best checkpoint (label scoring at
        # every evaluation would cost more than the training itself on a CPU).
        metric_for_best_model="eval_loss" if causal else "macro_f1",
        greater_is_better=not causal,
        logging_steps=max(1, eval_every // 4),
        seed=cfg.train.seed,
        data_seed=cfg.train.seed,
        use_cpu=True,
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=not causal,
    )

    def compute_metrics(pred) -> dict[str, float]:
        y_pred = np.asarray(pred.predictions).argmax(axis=-1)
        m = classification_metrics(pred.label_ids, y_pred, list(range(len(splits.labels))))
        return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}

    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
                      compute_metrics=None if causal else compute_metrics)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    return trainer, tokenizer, seconds


def train_adapter(splits: DomainSplits, cfg: PipelineConfig, output_dir: str | Path) -> TrainedAdapter:
    output_dir = Path(output_dir)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    causal = get_spec(cfg.base.name).kind == "causal"

    # --- setup
    with _INIT_LOCK:
        set_seed(cfg.train.seed)
        model = build_lora_model(cfg.base.name, splits.labels, cfg.lora, cfg.base.cache_dir)
    trainable, total = count_parameters(model)

    # --- train
    trainer, tokenizer, train_seconds = _fit(model, splits, cfg, output_dir, cfg.train.learning_rate)
    best = trainer.state.best_metric

    # --- save (adapter + head + label map; never the base)
    adapter_dir = output_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    meta = AdapterMeta(domain=splits.domain, labels=splits.labels, base_model=cfg.base.name,
                       max_length=cfg.base.max_length, kind="causal" if causal else "encoder",
                       instruction=cfg.generative.instruction if causal else "")
    save_adapter(trainer.model, meta, adapter_dir)
    if causal:  # the kept checkpoint was chosen by loss; report its validation macro-F1 all the same
        val = splits.read("val")
        trainer.model.eval()
        loaded = LoadedAdapter(meta=meta, model=trainer.model, tokenizer=tokenizer)
        best = classification_metrics(val["label"].tolist(), loaded.predict(val["text"].tolist(),
                                      cfg.generative.score_batch_size), splits.labels)["macro_f1"]
    return TrainedAdapter(
        domain=splits.domain,
        adapter_dir=str(adapter_dir),
        labels=splits.labels,
        train_seconds=round(train_seconds, 3),
        steps=trainer.state.global_step,
        trainable_params=trainable,
        total_params=total,
        adapter_size_bytes=adapter_size_bytes(adapter_dir),
        best_val_macro_f1=float(best) if best is not None else float("nan"),
        trained_on=f"{socket.gethostname()}:{os.getpid()}",
    )


@dataclass
class FullFineTune:
    """The comparison point of the benchmarks: the same base with every weight trained (no LoRA)."""
    model: LoadedAdapter  # held in memory only: a full copy of the base is what this product avoids storing
    train_seconds: float
    steps: int
    trainable_params: int
    best_val_macro_f1: float


def train_full_model(splits: DomainSplits, cfg: PipelineConfig, output_dir: str | Path,
                     learning_rate: float) -> FullFineTune:
    """Same data, schedule, batch and checkpoint choice as :func:`train_adapter`; every weight trainable.
    Encoder bases only (a causal LM's full fine-tune would need the vocabulary-sized LM head trained too)."""
    if get_spec(cfg.base.name).kind != "encoder":
        raise ConfigError(f"base.name={cfg.base.name}: the full fine-tune baseline supports encoder bases only")
    with _INIT_LOCK:
        set_seed(cfg.train.seed)
        model = load_classifier_base(cfg.base.name, splits.labels)
    trainable, _ = count_parameters(model)
    trainer, tokenizer, seconds = _fit(model, splits, cfg, Path(output_dir), learning_rate)
    meta = AdapterMeta(domain=splits.domain, labels=splits.labels, base_model=cfg.base.name,
                       max_length=cfg.base.max_length)
    return FullFineTune(model=LoadedAdapter(meta=meta, model=trainer.model.eval(), tokenizer=tokenizer),
                        train_seconds=round(seconds, 3), steps=trainer.state.global_step,
                        trainable_params=trainable, best_val_macro_f1=float(trainer.state.best_metric))
