"""Train one domain's LoRA adapter with the HF Trainer: setup -> train -> save.

Everything that differs between model kinds (the base, the examples and collator, the checkpoint
metric) comes from the base's kind. The best checkpoint by the kind's metric is kept
(``load_best_model_at_end``); only the adapter, its trained modules and the label map are saved.
``train_full_model`` runs the same recipe with every weight of the base trained: the benchmarks'
comparison point, never registered.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments,
                          set_seed)

from lora_pipeline.config import BaseModelConfig, TrainConfig, TrainingInputs
from lora_pipeline.data.prepare import DomainSplits
from lora_pipeline.errors import ConfigError
from lora_pipeline.evaluation.metrics import classification_metrics
from lora_pipeline.models import ModelKind, kind_of
from lora_pipeline.models.adapters import (AdapterMeta, LoadedAdapter, adapter_size_bytes, build_lora_model,
                                           count_parameters, save_adapter)
from lora_pipeline.models.bases import base_model_path, get_spec, load_tokenizer
from lora_pipeline.models.compute import training_attention
from lora_pipeline.models.text_length import ChosenLength, length_for
from lora_pipeline.ops.compute_slots import MODEL_WORK, TRAINING
from lora_pipeline.ops.console import log_details_to
from lora_pipeline.ops.isolation import call_in_child_process
from lora_pipeline.training.bag_of_words import choose_bag_of_words

# One training at a time per process, from seeding to the last step. Two HF Trainers in two threads share
# accelerate's global AcceleratorState (one's reset was seen to crash the other: "'AcceleratorState' object has
# no attribute 'distributed_type'"), and dropout draws from torch's one global generator, so concurrent
# training in threads is neither safe nor reproducible. The pipeline trains each domain in its own process
# (train_in_own_process); this lock only guards callers that train in threads of one process.
_TRAIN_LOCK = threading.Lock()
IMBALANCE_RATIO = 1.5  # class_weights: auto weights a domain whose largest class has this many times the smallest's rows


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
    max_length: int = 0  # tokens of a text the adapter sees (chosen from the data for base.max_length: auto)
    truncated_share: float = 0.0  # share of its train texts longer than that (cut head+tail)
    class_weights: list[float] | None = None  # loss weight per label (None: unweighted)
    precision: str = "fp32"  # "bf16" (autocast; the weights stay fp32) or "fp32": runtime.precision as resolved
    device: str = "cpu"
    epochs_run: float = 0.0  # early stopping may end training before train.epochs
    train_rows: int = 0  # rows trained on, of
    train_rows_available: int = 0  # the rows the domain's train split had before split.max_train_rows
    fitted: dict[str, float] = field(default_factory=dict)  # chosen from the data before training (bag_of_words_c)
    bag_of_words: bool = False  # whether the adapter has the bag-of-words term (training/bag_of_words.py), and why:
    bag_of_words_reason: str = ""
    bag_of_words_tfidf_val_f1: float | None = None  # the signal that decided it below lora.bag_of_words_min_labels


class ProgressLine(TrainerCallback):
    """One console line per logging step and per validation of a domain's training (instead of the
    Trainer's progress bar and log dicts, which interleave when two domains train at once)."""

    def __init__(self, domain: str):
        self.domain, self.started = domain, time.perf_counter()

    def _print(self, state, extra: str = "") -> None:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / state.global_step * (state.max_steps - state.global_step) if state.global_step else 0.0
        print(f"train {self.domain}: step {state.global_step}/{state.max_steps}, epoch {state.epoch or 0:.1f}/"
              f"{state.num_train_epochs:g}{extra}, {elapsed:.0f} s, ETA {eta:.0f} s", flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._print(state, f", loss {logs['loss']:.3f}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        score = (metrics or {}).get(f"eval_{args.metric_for_best_model}")
        self._print(state, f", val {args.metric_for_best_model} {score:.3f}" if score is not None else "")


MAX_EPOCHS_FOR_MIN_STEPS = 10  # train.min_steps never makes a tiny domain loop over its rows more often


class _Trainer(Trainer):
    """The HF Trainer, each training step's attention kernel chosen by its batch's width
    (:func:`~lora_pipeline.models.compute.training_attention`); evaluation keeps torch's own choice."""

    def __init__(self, *args, attention_for_width, **kwargs):
        super().__init__(*args, **kwargs)
        self._attention_for_width = attention_for_width

    def training_step(self, model, inputs, *args, **kwargs):
        ids = inputs.get("input_ids")
        with self._attention_for_width(ids.shape[-1]) if ids is not None else contextlib.nullcontext():
            return super().training_step(model, inputs, *args, **kwargs)


def _schedule(n_train: int, train: TrainConfig) -> tuple[int, int]:
    """(total optimizer steps, evaluate/save every N steps): once per epoch, or once at the end.

    train.epochs, or more epochs for a small domain, so that it gets train.min_steps steps (at most 10
    epochs): 374 reviews at batch 16 are 24 steps an epoch, and 3 epochs would be 72 steps."""
    steps_per_epoch = max(1, math.ceil(n_train / train.batch_size))
    if train.max_steps > 0:
        total = train.max_steps
    else:
        epochs = max(train.epochs, min(MAX_EPOCHS_FOR_MIN_STEPS, train.min_steps / steps_per_epoch))
        total = math.ceil(epochs * steps_per_epoch)
    return total, min(steps_per_epoch, total)


class EarlyStoppingAfterMinSteps(EarlyStoppingCallback):
    """HF's early stopping, counting only evaluations after ``min_steps``: on a small domain the first
    epochs' validation scores (50 texts: one text is 2 %) say little about where training ends up."""

    def __init__(self, patience: int, min_steps: int):
        super().__init__(patience)
        self.min_steps = min_steps

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if state.global_step < self.min_steps:
            self.early_stopping_patience_counter = 0
            control.should_training_stop = False


class KeepLaterWithinTolerance(TrainerCallback):
    """Best-checkpoint choice with a tolerance: a later checkpoint whose validation score is within
    ``tolerance`` of the best so far replaces the kept one (HF keeps only a strictly better one). On a small
    validation split a difference of one text is noise, and the later checkpoint has trained longer: on 500
    IMDB reviews (50 validation) seed 43 kept epoch 2 (val 0.843, test accuracy 0.733) over epochs 4-6.25
    (val 0.838, one review fewer; test 0.88).

    HF compares each evaluation with ``state.best_metric`` after the ``on_evaluate`` callbacks; lowering it
    just below a score within tolerance makes HF keep that checkpoint. The best score itself is tracked here,
    so the tolerance is measured from it, never from a kept score below it. A kept checkpoint counts as
    progress for early stopping (``checkpoint_callbacks`` puts this callback first)."""

    def __init__(self, tolerance: float):
        self.tolerance, self.best = tolerance, float("-inf")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model
        value = (metrics or {}).get(name if name.startswith("eval_") else f"eval_{name}")  # as HF reads it
        if value is None or not args.greater_is_better:
            return
        if value >= self.best - self.tolerance and state.best_metric is not None:  # a tie is within it too
            state.best_metric = min(state.best_metric, value - 1e-9)
        self.best = max(self.best, value)


def checkpoint_callbacks(kind: ModelKind, train: TrainConfig, total_steps: int, n_val: int) -> list[TrainerCallback]:
    """Which checkpoint is kept and when training stops. The tolerance comes first, so that a checkpoint it
    keeps counts as progress for early stopping too. It applies to a score that is a share of validation
    texts (macro-F1: one text moves it by about 1/n), not to a validation loss."""
    callbacks: list[TrainerCallback] = []
    if kind.checkpoint_metric == "macro_f1" and train.checkpoint_tie_texts:
        callbacks.append(KeepLaterWithinTolerance(train.checkpoint_tie_texts / max(1, n_val)))
    if train.early_stopping_patience:
        callbacks.append(EarlyStoppingAfterMinSteps(train.early_stopping_patience, min(train.min_steps, total_steps)))
    return callbacks


def resolve_max_length(tokenizer, splits: DomainSplits, base: BaseModelConfig) -> ChosenLength:
    """base.max_length, or for 'auto' the length chosen from the domain's train texts (text_length.py)."""
    return length_for(tokenizer, splits.read("train")["text"].tolist(), base)


def class_weights_for(splits: DomainSplits, train: TrainConfig) -> list[float] | None:
    """Balanced loss weights (n / (k * n_label), as scikit-learn's 'balanced') when asked for, or under
    'auto' when the largest class has >= 1.5x the rows of the smallest; else None."""
    counts = splits.read("train")["label"].value_counts().reindex(splits.labels, fill_value=0)
    imbalanced = counts.max() >= IMBALANCE_RATIO * max(1, counts.min())
    if train.class_weights == "none" or (train.class_weights == "auto" and not imbalanced):
        return None
    weights = counts.sum() / (len(counts) * counts.clip(lower=1))
    return [round(float(w), 4) for w in weights]


def _fit(model, kind: ModelKind, splits: DomainSplits, inputs: TrainingInputs, output_dir: Path,
         learning_rate: float, tokenizer, max_length: int, class_weights: list[float] | None,
         callbacks: Sequence[TrainerCallback] = ()):
    """Train ``model`` on the domain's train split with the HF Trainer, evaluating on val once per epoch,
    stopping early when it stops improving, and keeping the best checkpoint. Returns (trainer, seconds, what
    the kind fitted to the data before training)."""
    train, compute = inputs.train, inputs.compute
    train_ds, val_ds, collator = kind.training_data(
        tokenizer, splits, max_length, inputs.instruction_for(splits.domain),
        max_answer_tokens=inputs.generation.max_target_tokens if inputs.generation else None)
    fitted = kind.fit_to_train_data(model, train_ds, val_ds, inputs.lora)
    total_steps, eval_every = _schedule(len(train_ds), train)
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        max_steps=total_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=kind.validation_batch_size(train),
        learning_rate=learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a share of the total steps
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model=kind.checkpoint_metric,
        greater_is_better=kind.greater_is_better,
        logging_steps=max(1, eval_every // 4),
        seed=train.seed,
        data_seed=train.seed,
        # Mixed precision through the Trainer's own switch (accelerate's bf16 autocast, on CPU too): the
        # weights, the optimizer state and the saved adapter stay fp32.
        bf16=compute.precision == "bf16",
        use_cpu=compute.device == "cpu",
        dataloader_pin_memory=compute.device == "cuda",  # faster host-to-GPU copies; nothing to pin for a CPU
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        report_to="none",
        disable_tqdm=True,  # ProgressLine prints one line per step logged instead
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the kind's examples hold exactly what the model takes
    )
    math_up_to = get_spec(inputs.base.name).cpu_bf16_math_attention_up_to
    trainer = _Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
                       compute_metrics=kind.compute_metrics(splits.labels),
                       callbacks=[*checkpoint_callbacks(kind, train, total_steps, len(val_ds)),
                                  ProgressLine(splits.domain), *callbacks],
                       compute_loss_func=kind.loss_function(class_weights, tokenizer, splits.labels, train),
                       attention_for_width=lambda width: training_attention(compute, width, math_up_to))
    trainer.remove_callback(PrinterCallback)  # it prints every log dict
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    return trainer, seconds, fitted


def _val_macro_f1(trainer: Trainer, kind: ModelKind, adapter: LoadedAdapter, splits: DomainSplits,
                  batch_size: int) -> float:
    """The kept checkpoint's validation macro-F1: the Trainer's own figure when that is what chose it,
    else scored once on the validation split."""
    if kind.checkpoint_metric == "macro_f1":
        best = trainer.state.best_metric
        return float(best) if best is not None else float("nan")
    val = splits.read("val")
    predicted = adapter.predict(val["text"].tolist(), batch_size)
    return classification_metrics(val["label"].tolist(), predicted, splits.labels)["macro_f1"]


def train_adapter(splits: DomainSplits, inputs: TrainingInputs, output_dir: str | Path,
                  callbacks: Sequence[TrainerCallback] = ()) -> TrainedAdapter:
    """``callbacks``: extra HF Trainer callbacks (the benchmarks watch training with them)."""
    output_dir = Path(output_dir)
    if inputs.train.torch_threads:
        torch.set_num_threads(inputs.train.torch_threads)
    kind = kind_of(inputs.base.name, inputs.task)

    # --- setup: the data decides the sequence length, the class weights and whether the bag-of-words term trains
    tokenizer = load_tokenizer(inputs.base.name, inputs.base.cache_dir)
    length = resolve_max_length(tokenizer, splits, inputs.base)
    weights = class_weights_for(splits, inputs.train) if kind.classifies else None
    term = choose_bag_of_words(inputs.base.name, inputs.lora, splits)
    with _TRAIN_LOCK:
        set_seed(inputs.train.seed)
        model = build_lora_model(inputs.base.name, splits.labels, inputs.lora, inputs.base.cache_dir, inputs.task,
                                 bag_of_words=term.trained)

        # --- train
        trainer, train_seconds, fitted = _fit(model, kind, splits, inputs, output_dir, inputs.train.learning_rate,
                                              tokenizer, length.max_length, weights, callbacks)
        trainable, total = count_parameters(model)  # after fitting: a term fitted before training is not trained

    # --- save (adapter + trained modules + label map; never the base)
    adapter_dir = output_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    meta = AdapterMeta(domain=splits.domain, labels=splits.labels, base_model=inputs.base.name,
                       max_length=length.max_length, kind=kind.name,
                       instruction=inputs.instruction_for(splits.domain) or "",
                       max_new_tokens=inputs.generation.max_new_tokens if inputs.generation else 0)
    save_adapter(trainer.model, meta, adapter_dir)
    trainer.model.eval()
    loaded = LoadedAdapter(meta=meta, model=trainer.model, tokenizer=tokenizer, compute=inputs.compute)
    return TrainedAdapter(
        domain=splits.domain,
        adapter_dir=str(adapter_dir),
        labels=splits.labels,
        train_seconds=round(train_seconds, 3),
        steps=trainer.state.global_step,
        trainable_params=trainable,
        total_params=total,
        adapter_size_bytes=adapter_size_bytes(adapter_dir),
        best_val_macro_f1=(_val_macro_f1(trainer, kind, loaded, splits, kind.validation_batch_size(inputs.train))
                           if kind.classifies else float("nan")),  # a writer's checkpoint: best val loss
        trained_on=f"{socket.gethostname()}:{os.getpid()}",
        max_length=length.max_length,
        truncated_share=length.truncated_share,
        class_weights=weights,
        epochs_run=round(float(trainer.state.epoch or 0), 2),
        train_rows=splits.counts["train"],
        train_rows_available=splits.available.get("train", splits.counts["train"]),
        precision=inputs.compute.precision,
        device=inputs.compute.device,
        fitted=fitted,
        bag_of_words=term.trained,
        bag_of_words_reason=term.reason,
        bag_of_words_tfidf_val_f1=term.tfidf_val_macro_f1,
    )


def train_in_own_process(splits: DomainSplits, inputs: TrainingInputs, output_dir: str | Path) -> TrainedAdapter:
    """:func:`train_adapter` in a fresh child process (lora_pipeline.ops.isolation): domains train side by side
    without sharing accelerate's or torch's global state, and a crash fails only this domain."""
    if multiprocessing.current_process().daemon:  # a Dask worker: already its own process, and may not fork
        return train_adapter(splits, inputs, output_dir)
    base_model_path(inputs.base.name, inputs.base.cache_dir)  # a GGUF base converts once, here, not per child
    with MODEL_WORK.hold(TRAINING):  # small CPU machines: one model job at a time (ops/compute_slots.py)
        return call_in_child_process(_train_logged, splits, inputs, str(output_dir),
                                     what=f"the training process of domain '{splits.domain}'")


def _train_logged(splits: DomainSplits, inputs: TrainingInputs, output_dir: str) -> TrainedAdapter:
    """:func:`train_adapter` with the libraries' output in ``output_dir/train.log`` (the console gets
    the progress lines)."""
    log_details_to(Path(output_dir) / "train.log", console=False)
    return train_adapter(splits, inputs, output_dir)


@dataclass
class FullFineTune:
    """The comparison point of the benchmarks: the same base with every weight trained (no LoRA)."""
    model: LoadedAdapter  # held in memory only: a full copy of the base is what this product avoids storing
    train_seconds: float
    steps: int
    trainable_params: int
    best_val_macro_f1: float


def train_full_model(splits: DomainSplits, inputs: TrainingInputs, output_dir: str | Path,
                     learning_rate: float) -> FullFineTune:
    """Same data, schedule, batch and checkpoint choice as :func:`train_adapter`; every weight trainable, so
    the encoder's bag-of-words term is fitted (lora.bag_of_words_fit) on any label count, not only where the LoRA
    recipe trains it. Kinds chosen by validation macro-F1 only (an encoder; a causal LM's full fine-tune would
    train its vocabulary-sized LM head too)."""
    kind = kind_of(inputs.base.name)
    if kind.checkpoint_metric != "macro_f1":
        raise ConfigError(f"base.name={inputs.base.name}: the full fine-tune baseline supports encoder bases only")
    tokenizer = load_tokenizer(inputs.base.name, inputs.base.cache_dir)
    length = resolve_max_length(tokenizer, splits, inputs.base)
    with _TRAIN_LOCK:
        set_seed(inputs.train.seed)
        model = kind.load_base(get_spec(inputs.base.name), splits.labels, inputs.base.cache_dir,
                               dropout=inputs.lora.base_dropout)  # the same base as LoRA trains on
        trainer, seconds, _ = _fit(model, kind, splits, inputs, Path(output_dir), learning_rate, tokenizer,
                                   length.max_length, class_weights_for(splits, inputs.train))
        trainable, _ = count_parameters(model)
    meta = AdapterMeta(domain=splits.domain, labels=splits.labels, base_model=inputs.base.name,
                       max_length=length.max_length, kind=kind.name)
    return FullFineTune(model=LoadedAdapter(meta=meta, model=trainer.model.eval(), tokenizer=tokenizer,
                                            compute=inputs.compute),
                        train_seconds=round(seconds, 3), steps=trainer.state.global_step,
                        trainable_params=trainable, best_val_macro_f1=float(trainer.state.best_metric))
