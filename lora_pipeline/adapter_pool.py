"""One frozen base in memory, many named LoRA adapters, and mixed-adapter forward passes.

Encoder bases classify with a head per adapter; generative (causal) bases score each adapter's label
words after its prompt (``lora_pipeline.generative``), the rows of any adapters again in one pass.

A batch may hold texts for different adapters: peft routes each row through its own adapter
(``adapter_names=[...]``), so nothing switches a global "active adapter" between requests (which two
concurrent requests would race on). Adapters are added and removed while serving; a lock keeps those
changes out of a running forward pass.

Each adapter brings its own classification head (``modules_to_save``), but a head's width is fixed when
the base is built. The base head is built ``max_labels`` wide and every adapter's head is zero-padded to
that width; a row's logits are cut back to its adapter's labels before the softmax, so the
probabilities are the ones the adapter alone computes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from peft.utils import ModulesToSaveWrapper, load_peft_weights, set_peft_model_state_dict

from lora_pipeline.adapters import AdapterMeta, lora_settings_for
from lora_pipeline.base_models import get_spec, load_causal_base, load_classifier_base, load_tokenizer
from lora_pipeline.generative import PromptFormat, build_prompt, score_labels
from lora_pipeline.config import LoraSettings
from lora_pipeline.errors import AdapterLoadError, ConfigError

# The pool's own adapter: always present and active, so removing a served adapter never leaves peft
# without an active one. Rows are never routed to it.
IDLE = "__idle__"
# Head module names of transformers' sequence classifiers (BERT: classifier, decoder-only LMs: score).
_HEAD_NAMES = ("classifier", "score")
# Module types peft can route per row in a mixed batch.
_MIXABLE = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


@dataclass(frozen=True)
class PoolRequest:
    adapter: str  # a name given to :meth:`AdapterPool.add`
    text: str


class AdapterPool:
    def __init__(self, base_model: str, lora: LoraSettings, max_labels: int = 16, cache_dir: str | None = None):
        self.base_model = base_model
        self.max_labels = max_labels
        # Generative (causal) bases answer with label tokens: no head, prompts built from each adapter's meta.
        self.kind = get_spec(base_model).kind
        lora = lora_settings_for(base_model, lora)  # null target/saved modules -> the base's defaults
        # Fully-trained modules besides the head; every adapter must train the same ones (see add()).
        self.modules_to_save = sorted(set(lora.modules_to_save) - set(_HEAD_NAMES))
        self.tokenizer = load_tokenizer(base_model, cache_dir)
        causal = self.kind == "causal"
        base = (load_causal_base(base_model, cache_dir) if causal
                else load_classifier_base(base_model, [f"slot{i}" for i in range(max_labels)]))
        idle = LoraConfig(task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS, r=1,
                          target_modules=list(lora.target_modules), modules_to_save=list(lora.modules_to_save) or None)
        self.model: PeftModel = get_peft_model(base, idle, adapter_name=IDLE).eval()
        for module_name, module in self.model.named_modules():
            if isinstance(module, ModulesToSaveWrapper) and not isinstance(module.original_module, _MIXABLE):
                raise ConfigError(
                    f"lora.modules_to_save: '{module_name}' is a {type(module.original_module).__name__}; peft mixes "
                    "adapters per row only in Linear/Embedding/Conv modules (e.g. 'pooler.dense', not 'pooler')")
        self.meta: dict[str, AdapterMeta] = {}
        self.idle = IDLE
        self.lock = threading.RLock()

    @property
    def names(self) -> list[str]:
        return list(self.meta)

    def add(self, name: str, adapter_dir: str | Path) -> AdapterMeta:
        """Load a saved adapter (safetensors) under ``name``; the pool is unchanged if it fails."""
        adapter_dir = Path(adapter_dir)
        meta = AdapterMeta.load(adapter_dir)
        if meta.base_model != self.base_model:
            raise AdapterLoadError(f"{adapter_dir}: trained on base '{meta.base_model}', this pool serves '{self.base_model}'")
        if meta.kind != self.kind:
            raise AdapterLoadError(f"{adapter_dir}: a {meta.kind} adapter cannot join a {self.kind} pool")
        if len(meta.labels) > self.max_labels:
            raise AdapterLoadError(f"{adapter_dir}: {len(meta.labels)} labels, more than api.max_labels={self.max_labels}")
        if not (adapter_dir / "adapter_model.safetensors").is_file():  # never unpickle a .bin from a registry
            raise AdapterLoadError(f"{adapter_dir}: no adapter_model.safetensors (only safetensors weights are loaded)")
        config = PeftConfig.from_pretrained(str(adapter_dir))
        # peft routes a row through a fully-trained module only if every adapter has its own copy of it;
        # otherwise some rows would silently run the base module.
        trained = sorted(set(config.modules_to_save or []) - set(_HEAD_NAMES))
        if trained != self.modules_to_save:
            raise AdapterLoadError(f"{adapter_dir}: modules_to_save {trained} differ from this server's "
                                   f"lora.modules_to_save {self.modules_to_save}; retrain it with the server's config")
        weights = load_peft_weights(str(adapter_dir))
        if self.kind != "causal":
            weights = _pad_head(weights, len(meta.labels), self.max_labels)
        with self.lock:
            if name in self.meta:
                raise AdapterLoadError(f"adapter name '{name}' is already in the pool")
            try:
                self.model.add_adapter(name, config)
                result = set_peft_model_state_dict(self.model, weights, adapter_name=name)
                missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
                if result.unexpected_keys or missing:
                    raise AdapterLoadError(f"{adapter_dir}: weights do not fit the base "
                                           f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")
            except Exception:
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)
                raise
            self.model.eval()
            self.meta[name] = meta
        return meta

    def remove(self, name: str) -> None:
        with self.lock:
            self.meta.pop(name)
            self.model.delete_adapter(name)

    @torch.inference_mode()
    def predict_proba(self, requests: list[PoolRequest], batch_size: int = 32) -> list[np.ndarray]:
        """Per request, the probabilities over its adapter's labels; rows of any adapters share each forward."""
        out: list[np.ndarray] = []
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            with self.lock:  # adapters can neither vanish nor appear during the forward pass
                metas = [self._meta_for(r.adapter) for r in chunk]
                if self.kind == "causal":
                    prompts = [build_prompt(self.tokenizer, m.prompt_format(), r.text) for r, m in zip(chunk, metas)]
                    out += score_labels(self.model, self.tokenizer, prompts, [list(m.labels) for m in metas],
                                        adapter_names=[r.adapter for r in chunk], batch_size=batch_size)
                    continue
                batch = self.encode([r.text for r in chunk], [m.max_length for m in metas])
                logits = self.model(**batch, adapter_names=[r.adapter for r in chunk]).logits.float()
            for row, meta in zip(logits, metas):
                out.append(torch.softmax(row[: len(meta.labels)], dim=-1).numpy())
        return out

    @torch.inference_mode()
    def predict_few_shot(self, text: str, examples: list[tuple[str, str]], labels: list[str], instruction: str,
                         max_text_tokens: int) -> np.ndarray:
        """No adapter, no training: the bare base with labelled examples in the prompt (causal bases only)."""
        if self.kind != "causal":
            raise ConfigError(f"few-shot prompting needs a generative base; this server's base is {self.base_model}")
        fmt = PromptFormat(instruction, labels, max_text_tokens)
        with self.lock:
            [probs] = score_labels(self.model, self.tokenizer, [build_prompt(self.tokenizer, fmt, text, examples)],
                                   [labels], adapter_names=["__base__"])
        return probs

    def _meta_for(self, name: str) -> AdapterMeta:
        try:
            return self.meta[name]
        except KeyError:
            raise KeyError(f"adapter '{name}' is not in the pool (loaded: {', '.join(self.meta) or 'none'})") from None

    def encode(self, texts: list[str], max_lengths: list[int]) -> dict[str, torch.Tensor]:
        """Truncate each text at its own adapter's max_length (as in training), then pad the batch."""
        features: list[dict] = [{}] * len(texts)
        for max_length in set(max_lengths):
            rows = [i for i, m in enumerate(max_lengths) if m == max_length]
            encoded = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length)
            for j, i in enumerate(rows):
                features[i] = {key: values[j] for key, values in encoded.items()}
        return self.tokenizer.pad(features, return_tensors="pt")


def _pad_head(weights: dict[str, torch.Tensor], n_labels: int, width: int) -> dict[str, torch.Tensor]:
    """Zero-pad the head's weight/bias rows from ``n_labels`` to ``width`` (the extra logits are cut off)."""
    padded = dict(weights)
    for key, tensor in weights.items():
        module_path = key.rsplit(".", 1)[0]
        if module_path.rsplit(".", 1)[-1] in _HEAD_NAMES and tensor.shape[0] == n_labels:
            grown = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype)
            grown[:n_labels] = tensor
            padded[key] = grown
    return padded
