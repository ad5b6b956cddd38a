"""The interface every model kind implements: what training, evaluation, the pool and the API ask of it.

A kind is stateless: one instance per kind, registered in ``lora_pipeline.models.KINDS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from peft import LoraConfig, TaskType

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from lora_pipeline.config import EvaluationInputs, LoraSettings, TrainConfig
    from lora_pipeline.data.prepare import DomainSplits
    from lora_pipeline.models.adapters import AdapterMeta, LoadedAdapter
    from lora_pipeline.models.bases import BaseModelSpec


class ModelKind(ABC):
    name: ClassVar[str]  # as in BaseModelSpec.kind and AdapterMeta.kind
    task_type: ClassVar[TaskType]
    # True: the prompt (generative.instruction) is part of what is trained, and of the adapter's identity.
    prompted: ClassVar[bool] = False
    # The HF Trainer's metric_for_best_model and its direction.
    checkpoint_metric: ClassVar[str]
    greater_is_better: ClassVar[bool]
    # Models besides "adapter" and "tfidf" that evaluation scores (their keys in DomainEvaluation.metrics).
    baselines: ClassVar[tuple[str, ...]]
    # True: the API offers POST /predict_fewshot (the bare base, prompted with labelled examples).
    few_shot_api: ClassVar[bool] = False
    # True: predicts one of the domain's labels (class weights, macro-F1); False: writes text (task: generate).
    classifies: ClassVar[bool] = True
    # The kind whose serving pool (one base in memory) this kind's adapters join; None: its own.
    pool_kind: ClassVar[str | None] = None

    # --- building ---------------------------------------------------------------------------------
    @abstractmethod
    def load_base(self, spec: BaseModelSpec, labels: list[str], cache_dir: str | None,
                  dropout: float | None = None) -> torch.nn.Module:
        """The frozen base, ready for a LoRA adapter of a domain with ``labels``. ``dropout``: the rate of the
        base's own dropout (hidden states, attention) while training; None keeps its config's."""

    def lora_config(self, lora: LoraSettings, **overrides: Any) -> LoraConfig:
        """peft's config for ``lora`` (its null defaults already filled in from the base)."""
        return LoraConfig(**{
            "task_type": self.task_type, "r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
            "target_modules": list(lora.target_modules), "modules_to_save": list(lora.modules_to_save) or None,
            "layers_to_transform": list(lora.layers_to_transform) if lora.layers_to_transform is not None else None,
            **overrides})

    # --- training ---------------------------------------------------------------------------------
    @abstractmethod
    def training_data(self, tokenizer: PreTrainedTokenizerBase, splits: DomainSplits, max_length: int,
                      instruction: str | None, max_answer_tokens: int | None = None) -> tuple[Any, Any, Callable]:
        """(train dataset, validation dataset, collator) for the HF Trainer; texts cut head+tail to ``max_length``
        (an encoder's bag-of-words term also gets them whole; ``max_answer_tokens``: generation targets cut to
        this)."""

    def fit_to_train_data(self, model: torch.nn.Module, train_dataset: Any, val_dataset: Any,
                          lora: LoraSettings) -> dict[str, float]:
        """Set what ``model`` takes from its domain's train split before training, choosing among settings on
        ``val_dataset`` (by default: nothing). Returns what was chosen, recorded on the trained adapter."""
        return {}

    def loss_function(self, class_weights: list[float] | None, tokenizer: PreTrainedTokenizerBase,
                      labels: list[str], train: TrainConfig) -> Callable | None:
        """The Trainer's ``compute_loss_func`` for these per-class weights, one per label, and ``train``'s loss
        settings (None: the model's own loss)."""
        return None

    def compute_metrics(self, labels: list[str]) -> Callable | None:
        """The Trainer's ``compute_metrics`` (None: the checkpoint metric needs none, e.g. eval_loss)."""
        return None

    @abstractmethod
    def validation_batch_size(self, train: TrainConfig) -> int:
        """Batch size of the Trainer's validation passes."""

    # --- prediction -------------------------------------------------------------------------------
    @abstractmethod
    def predict_proba(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                      metas: list[AdapterMeta], batch_size: int,
                      adapter_names: list[str] | None = None) -> list[np.ndarray]:
        """Per text, the probabilities over its own adapter's labels (``metas[i].labels``). With
        ``adapter_names``, each row goes through its own adapter in the same forward pass (peft)."""

    def predict(self, adapter: LoadedAdapter, texts: list[str], batch_size: int) -> list[str]:
        """What the adapter answers for each text: here its most probable label."""
        labels = adapter.meta.labels
        return [labels[i] for i in adapter.predict_proba(texts, batch_size).argmax(axis=1)]

    @abstractmethod
    def prediction_batch_size(self, inputs: EvaluationInputs) -> int:
        """Batch size for scoring a test split."""

    # --- evaluation -------------------------------------------------------------------------------
    @abstractmethod
    def baseline_predictions(self, adapter: LoadedAdapter, texts: list[str], labels: list[str],
                             train: pd.DataFrame, inputs: EvaluationInputs) -> dict[str, list[str]]:
        """Predicted labels of each of :attr:`baselines` (no training) on ``texts``."""

    # --- serving ----------------------------------------------------------------------------------
    @abstractmethod
    def pool_base(self, spec: BaseModelSpec, max_labels: int, cache_dir: str | None) -> torch.nn.Module:
        """The one base a serving pool loads, able to take adapters of up to ``max_labels`` labels."""

    def pool_weights(self, weights: dict[str, torch.Tensor], n_labels: int, width: int) -> dict[str, torch.Tensor]:
        """An adapter's weights as the pool's base needs them (e.g. a head padded to ``width``)."""
        return weights

    def few_shot_proba(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, text: str,
                       examples: list[tuple[str, str]], labels: list[str], instruction: str,
                       max_text_tokens: int) -> np.ndarray:
        """The bare base prompted with labelled ``examples`` (only where :attr:`few_shot_api`)."""
        raise NotImplementedError(f"the {self.name} kind has no few-shot prompting")
