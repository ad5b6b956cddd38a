"""A LoRA adapter on the frozen base: build it, save it (adapter + label map only), load it, predict.

Evaluation, the MLflow model and serving all predict through the kind's ``predict_proba``, so the
numbers a user sees in the registry are the numbers the served model gives.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper, set_peft_model_state_dict
from safetensors.torch import load_file

from lora_pipeline.config import Compute, LoraSettings
from lora_pipeline.errors import AdapterLoadError, ConfigError, NonFiniteOutputError
from lora_pipeline.models import ModelKind, kind_named, kind_of
from lora_pipeline.models.bases import get_spec, load_tokenizer
from lora_pipeline.models.compute import autocast
from lora_pipeline.models.encoder import BAG_OF_WORDS, EncoderClassifier
from lora_pipeline.models.prompting import PromptFormat

ADAPTER_META = "adapter_meta.json"  # label order + base + max_length (+ prompt), saved beside peft's own files


@dataclass(frozen=True)
class AdapterMeta:
    domain: str
    labels: list[str]
    base_model: str
    max_length: int
    kind: str = EncoderClassifier.name  # a key of lora_pipeline.models.KINDS (metas before kinds: encoders)
    instruction: str = ""  # prompted kinds: the prompt's first line, as trained
    max_new_tokens: int = 0  # generation kinds: tokens written per text by default (0: the kind's default)
    # What an encoder's bag-of-words term counts: 'all' of a text's tokens, or the 'head_tail' the encoder reads.
    # A meta saved without this key (before 1e61d1d) counted head_tail: see load.
    bag_of_words_reads: str = "all"

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(self.instruction, list(self.labels), self.max_length)

    def save(self, adapter_dir: Path) -> None:
        (Path(adapter_dir) / ADAPTER_META).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, adapter_dir: str | Path) -> AdapterMeta:
        saved = json.loads((Path(adapter_dir) / ADAPTER_META).read_text())
        return cls(**{"bag_of_words_reads": "head_tail", **saved})  # saved without one: it counted head+tail


def lora_settings_for(base_model: str, lora: LoraSettings, bag_of_words: bool = True) -> LoraSettings:
    """``lora`` with null target_modules / modules_to_save filled in from the base's defaults; without the
    bag-of-words term where ``bag_of_words`` is False (a domain's choice: training.bag_of_words). The default,
    every module any domain may train, is what a serving pool needs."""
    spec = get_spec(base_model)
    saved = list(lora.modules_to_save if lora.modules_to_save is not None else spec.modules_to_save)
    if not bag_of_words:
        saved = [module for module in saved if module != BAG_OF_WORDS]
    return lora.model_copy(update={
        "target_modules": list(lora.target_modules if lora.target_modules is not None else spec.lora_targets),
        "modules_to_save": saved,
    })


def build_lora_model(base_model: str, labels: list[str], lora: LoraSettings, cache_dir: str | None = None,
                     task: str = "classify", bag_of_words: bool | None = None) -> PeftModel:
    """The base (as the kind doing ``task`` builds it for ``labels``) with a fresh LoRA adapter; only the adapter
    trains. ``bag_of_words``: whether the bag-of-words term trains, as training chose it for the domain
    (training.bag_of_words); None = by the label count alone (lora.bag_of_words_min_labels)."""
    kind = kind_of(base_model, task)
    base = kind.load_base(get_spec(base_model), labels, cache_dir, dropout=lora.base_dropout)
    layers = lora.layers_to_transform
    if layers and max(layers) >= base.config.num_hidden_layers:  # peft would skip a layer it lacks, silently
        raise ConfigError(f"lora.layers_to_transform {layers}: {base_model} has layers "
                          f"0-{base.config.num_hidden_layers - 1}")
    if bag_of_words is None:
        bag_of_words = len(labels) >= lora.bag_of_words_min_labels
    return get_peft_model(base, kind.lora_config(lora_settings_for(base_model, lora, bag_of_words)))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_adapter(model: PeftModel, meta: AdapterMeta, adapter_dir: Path) -> Path:
    adapter_dir = Path(adapter_dir)
    model.save_pretrained(adapter_dir, safe_serialization=True)
    meta.save(adapter_dir)
    write_checksums(adapter_dir)
    return adapter_dir


CHECKSUMS = "checksums.json"  # sha256 of every other file of an adapter folder, written last when it is saved


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(adapter_dir: Path) -> str:
    """Record each file's sha256 in checksums.json; returns the adapter's digest (that file's sha256), which
    registration stores on the version so the manifest itself cannot be swapped unnoticed."""
    files = sorted(p for p in Path(adapter_dir).rglob("*") if p.is_file() and p.name != CHECKSUMS)
    sums = {p.relative_to(adapter_dir).as_posix(): _file_sha256(p) for p in files}
    (Path(adapter_dir) / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))
    return adapter_digest(adapter_dir)


def adapter_digest(adapter_dir: str | Path) -> str:
    return _file_sha256(Path(adapter_dir) / CHECKSUMS)


def verify_checksums(adapter_dir: str | Path, expected_digest: str | None = None) -> str:
    """Refuse an adapter folder whose files are not byte for byte what was saved (a truncated copy, a flipped
    block, a swapped file); ``expected_digest``: the digest recorded at registration. Returns the digest."""
    adapter_dir = Path(adapter_dir)
    manifest = adapter_dir / CHECKSUMS
    if not manifest.is_file():
        raise AdapterLoadError(f"{adapter_dir}: no {CHECKSUMS}; only adapters saved by lora-pipeline (with their "
                               f"checksums) are loaded; retrain it")
    digest = adapter_digest(adapter_dir)
    if expected_digest and digest != expected_digest:
        raise AdapterLoadError(f"{adapter_dir}: {CHECKSUMS} is not the one registered (sha256 {digest[:12]}, "
                               f"registered {expected_digest[:12]})")
    for name, expected in json.loads(manifest.read_text()).items():
        path = adapter_dir / name
        if not path.is_file() or _file_sha256(path) != expected:
            raise AdapterLoadError(f"{adapter_dir}: {name} does not match its sha256 in {CHECKSUMS} "
                                   f"({'missing' if not path.is_file() else 'changed'} since it was saved)")
    return digest


def adapter_size_bytes(adapter_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(adapter_dir).rglob("*") if p.is_file())


def finite_or_raise(probs: np.ndarray, domain: str) -> np.ndarray:
    if not np.isfinite(probs).all():
        raise NonFiniteOutputError(f"domain '{domain}': the adapter produced non-finite scores (broken weights)")
    return probs


@dataclass
class LoadedAdapter:
    meta: AdapterMeta
    model: torch.nn.Module  # a PeftModel (or, for the benchmarks' full fine-tune, the plain model)
    tokenizer: object
    compute: Compute = Compute()  # the device the model is on, and whether it predicts under bf16 autocast

    @property
    def kind(self) -> ModelKind:
        return kind_named(self.meta.kind)

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        with autocast(self.compute):
            probs = self.kind.predict_proba(self.model, self.tokenizer, list(texts), [self.meta] * len(texts),
                                            batch_size)
        return finite_or_raise(np.stack(probs), self.meta.domain) if probs else np.zeros(
            (0, len(self.meta.labels)), dtype=np.float32)

    def predict(self, texts: list[str], batch_size: int = 32) -> list[str]:
        """Per text, the adapter's answer: a label, or a generated text (as its kind predicts)."""
        with autocast(self.compute):
            return self.kind.predict(self, list(texts), batch_size)


WEIGHTS_FILE = "adapter_model.safetensors"  # the only weights file read: never unpickle a .bin from a registry


def saved_weights(model: PeftModel, adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """An adapter's saved weights (safetensors), keyed as peft saves them, plus each buffer of ``model``'s fully
    trained modules that the file lacks, from the base's module: a buffer added after the adapter was saved (the
    bag-of-words term's idf) keeps the value that adapter was trained with."""
    path = Path(adapter_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterLoadError(f"{adapter_dir}: no {WEIGHTS_FILE} (only safetensors weights are loaded)")
    weights = load_file(path)
    for name, wrapper in model.named_modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            buffers = {key for key, _ in wrapper.original_module.named_buffers()}
            weights.update({f"{name}.{key}": value.clone()
                            for key, value in wrapper.original_module.state_dict().items()
                            if key in buffers and f"{name}.{key}" not in weights})
    return weights


def load_weights(model: PeftModel, weights: dict[str, torch.Tensor], adapter_name: str, source: str | Path) -> None:
    """Load ``weights`` into ``model``'s adapter ``adapter_name``; every weight of that adapter must be given and
    nothing else (peft itself only warns)."""
    result = set_peft_model_state_dict(model, weights, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if f".{adapter_name}." in k or k.endswith(f".{adapter_name}")]
    if result.unexpected_keys or missing:
        raise AdapterLoadError(f"{source}: weights do not fit the base "
                               f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")


def load_adapter(adapter_dir: str | Path, cache_dir: str | None = None, compute: Compute | None = None) -> LoadedAdapter:
    """Base (from its package) + adapter weights (safetensors) in eval mode, on ``compute``'s device
    (default: fp32 on the CPU, which every machine has)."""
    compute = compute or Compute()
    verify_checksums(adapter_dir)
    meta = AdapterMeta.load(adapter_dir)
    base = kind_named(meta.kind).load_base(get_spec(meta.base_model), meta.labels, cache_dir)
    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = True
    model = get_peft_model(base, config)
    load_weights(model, saved_weights(model, adapter_dir), "default", adapter_dir)
    model = model.to(compute.device).eval()
    return LoadedAdapter(meta=meta, model=model, tokenizer=load_tokenizer(meta.base_model, cache_dir), compute=compute)
