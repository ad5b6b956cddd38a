"""A LoRA adapter on the frozen base: build it, save it (adapter + label map only), load it, predict.

Evaluation, the MLflow model and serving all predict through :func:`predict_proba`, so the numbers a
user sees in the registry are the numbers the served model gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from lora_pipeline.base_models import get_spec, load_causal_base, load_classifier_base, load_tokenizer
from lora_pipeline.config import LoraSettings
from lora_pipeline.generative import PromptFormat, build_prompt, score_labels

ADAPTER_META = "adapter_meta.json"  # label order + base + max_length, saved beside peft's own files


@dataclass(frozen=True)
class AdapterMeta:
    domain: str
    labels: list[str]
    base_model: str
    max_length: int
    kind: str = "encoder"  # "causal": a generative adapter, predicting by label scoring
    instruction: str = ""  # causal: the prompt's first line, as trained

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(self.instruction, list(self.labels), self.max_length)

    def save(self, adapter_dir: Path) -> None:
        (Path(adapter_dir) / ADAPTER_META).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, adapter_dir: str | Path) -> "AdapterMeta":
        return cls(**json.loads((Path(adapter_dir) / ADAPTER_META).read_text()))


def lora_settings_for(base_model: str, lora: LoraSettings) -> LoraSettings:
    """``lora`` with null target_modules / modules_to_save filled in from the base's defaults."""
    spec = get_spec(base_model)
    return lora.model_copy(update={
        "target_modules": list(lora.target_modules if lora.target_modules is not None else spec.lora_targets),
        "modules_to_save": list(lora.modules_to_save if lora.modules_to_save is not None else spec.modules_to_save),
    })


def build_lora_model(base_model: str, labels: list[str], lora: LoraSettings, cache_dir: str | None = None) -> PeftModel:
    lora = lora_settings_for(base_model, lora)
    causal = get_spec(base_model).kind == "causal"  # answers with label tokens: no head to train
    base = load_causal_base(base_model, cache_dir) if causal else load_classifier_base(base_model, labels)
    peft_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        # An encoder's head is new and must be trained and saved, else it reloads random.
        modules_to_save=lora.modules_to_save or None,
    )
    return get_peft_model(base, peft_config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_adapter(model: PeftModel, meta: AdapterMeta, adapter_dir: Path) -> Path:
    adapter_dir = Path(adapter_dir)
    model.save_pretrained(adapter_dir, safe_serialization=True)
    meta.save(adapter_dir)
    return adapter_dir


def adapter_size_bytes(adapter_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(adapter_dir).rglob("*") if p.is_file())


@dataclass
class LoadedAdapter:
    meta: AdapterMeta
    model: PeftModel
    tokenizer: object

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if self.meta.kind == "causal":
            fmt = self.meta.prompt_format()
            prompts = [build_prompt(self.tokenizer, fmt, text) for text in texts]
            probs = score_labels(self.model, self.tokenizer, prompts, [fmt.labels] * len(texts), batch_size=batch_size)
            return np.stack(probs) if probs else np.zeros((0, len(fmt.labels)))
        return predict_proba(self.model, self.tokenizer, texts, self.meta.max_length, batch_size)

    def predict(self, texts: list[str], batch_size: int = 32) -> list[str]:
        probs = self.predict_proba(texts, batch_size)
        return [self.meta.labels[i] for i in probs.argmax(axis=1)]


def load_adapter(adapter_dir: str | Path, cache_dir: str | None = None) -> LoadedAdapter:
    """Base (from its package) + adapter weights (safetensors) in eval mode."""
    meta = AdapterMeta.load(adapter_dir)
    if meta.kind == "causal":
        base = load_causal_base(meta.base_model, cache_dir)
    else:
        base = load_classifier_base(meta.base_model, meta.labels)
    model = PeftModel.from_pretrained(base, str(adapter_dir), use_safetensors=True)
    model.eval()
    return LoadedAdapter(meta=meta, model=model, tokenizer=load_tokenizer(meta.base_model, cache_dir))


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    """Class probabilities, shape (len(texts), n_labels)."""
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]), truncation=True, max_length=max_length,
            padding=True, return_tensors="pt",
        )
        out.append(torch.softmax(model(**batch).logits.float(), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)
