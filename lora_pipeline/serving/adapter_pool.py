"""One frozen base in memory, many named LoRA adapters, and mixed-adapter forward passes.

A batch may hold texts for different adapters: each row goes through its own adapter (peft's
``adapter_names=[...]``, with the LoRA product batched across adapters by ``stacked_lora``), so nothing
switches a global "active adapter" between requests (which two concurrent requests would race on).
Adapters are added and removed while serving; a lock keeps those changes out of a running forward pass. What the base looks like and how rows are scored is the base's
kind's business (``lora_pipeline.models``): an encoder's heads are padded to one shared width
(``api.max_labels``), a causal LM scores each adapter's labels after its own prompt.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper

from lora_pipeline.config import Compute, LoraSettings
from lora_pipeline.errors import AdapterLoadError, ConfigError
from lora_pipeline.models import kind_named, kind_of
from lora_pipeline.models.adapters import (AdapterMeta, finite_or_raise, load_weights, lora_settings_for, saved_weights,
                                           verify_checksums)
from lora_pipeline.models.bases import get_spec, load_tokenizer
from lora_pipeline.models.compute import autocast, store_for_autocast
from lora_pipeline.models.encoder import HEAD_NAMES
from lora_pipeline.models.generator import write_texts
from lora_pipeline.serving.stacked_lora import StackedLoraLinear, restack

# The pool's own adapter: always present and active, so removing a served adapter never leaves peft
# without an active one. Rows are never routed to it.
IDLE = "__idle__"
# Module types peft can route per row in a mixed batch.
_MIXABLE = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


@dataclass(frozen=True)
class PoolRequest:
    adapter: str  # a name given to :meth:`AdapterPool.add`
    text: str


class AdapterPool:
    def __init__(self, base_model: str, lora: LoraSettings, max_labels: int = 16, cache_dir: str | None = None,
                 compute: Compute | None = None):
        self.base_model = base_model
        self.compute = compute or Compute()  # device of the base (adapters join it there) and predict precision
        self.max_labels = max_labels
        self.kind = kind_of(base_model)
        lora = lora_settings_for(base_model, lora)  # null target/saved modules -> the base's defaults
        # Fully-trained modules besides the head; an adapter may train fewer of them, not others (see add()).
        self.modules_to_save = sorted(set(lora.modules_to_save) - set(HEAD_NAMES))
        self.tokenizer = load_tokenizer(base_model, cache_dir)
        base = store_for_autocast(self.kind.pool_base(get_spec(base_model), max_labels, cache_dir).to(self.compute.device),
                                  self.compute)  # every forward of the pool runs under its autocast
        # every layer: a champion may adapt layers lora.layers_to_transform (of this run) leaves out
        idle = self.kind.lora_config(lora, r=1, layers_to_transform=None)
        idle._register_custom_module({torch.nn.Linear: StackedLoraLinear})  # the adapted Linears, for every adapter
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

    def add(self, name: str, adapter_dir: str | Path, expected_digest: str | None = None) -> AdapterMeta:
        """Load a saved adapter (safetensors) under ``name``, its files checked against their sha256
        (and ``expected_digest``, the one registered); the pool is unchanged if anything fails."""
        adapter_dir = Path(adapter_dir)
        verify_checksums(adapter_dir, expected_digest)
        meta = AdapterMeta.load(adapter_dir)
        if meta.base_model != self.base_model:
            raise AdapterLoadError(f"{adapter_dir}: trained on base '{meta.base_model}', this pool serves '{self.base_model}'")
        if self.kind.name not in (meta.kind, kind_named(meta.kind).pool_kind):
            raise AdapterLoadError(f"{adapter_dir}: a {meta.kind} adapter cannot join a {self.kind.name} pool")
        if len(meta.labels) > self.max_labels:
            raise AdapterLoadError(f"{adapter_dir}: {len(meta.labels)} labels, more than api.max_labels={self.max_labels}")
        config = PeftConfig.from_pretrained(str(adapter_dir))
        # peft routes a row through a fully-trained module only if the row's adapter has its own copy of it.
        # An adapter that trained a module this server does not route could not be served as trained. One that
        # did not train one of the server's modules (say, saved before the bag-of-words term) gets a copy of the
        # base's module, which is the module it was trained with.
        trained = sorted(set(config.modules_to_save or []) - set(HEAD_NAMES))
        if not set(trained) <= set(self.modules_to_save):
            raise AdapterLoadError(f"{adapter_dir}: modules_to_save {trained} are not all in this server's "
                                   f"lora.modules_to_save {self.modules_to_save}; retrain it with the server's config")
        from_base = sorted(set(self.modules_to_save) - set(trained))
        config.modules_to_save = [*(config.modules_to_save or []), *from_base]
        weights = self.kind.pool_weights(saved_weights(self.model, adapter_dir), len(meta.labels), self.max_labels)
        for path, wrapper in self.model.named_modules():  # peft names a module by the end of its path
            if isinstance(wrapper, ModulesToSaveWrapper) and any(path == m or path.endswith(f".{m}")
                                                                 for m in from_base):
                weights.update({f"{path}.{key}": value.clone()
                                for key, value in wrapper.original_module.state_dict().items()})
        with self.lock:
            if name in self.meta:
                raise AdapterLoadError(f"adapter name '{name}' is already in the pool")
            try:
                self.model.add_adapter(name, config)
                load_weights(self.model, weights, name, adapter_dir)
            except Exception:
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)
                raise
            finally:
                restack(self.model)  # the stacked copies follow the adapters, loaded or not
            self.model.eval()
            self.meta[name] = meta
        return meta

    def remove(self, name: str) -> None:
        with self.lock:
            self.meta.pop(name)
            self.model.delete_adapter(name)
            restack(self.model)

    def predict_proba(self, requests: list[PoolRequest], batch_size: int = 32) -> list[np.ndarray]:
        """Per request, the probabilities over its adapter's labels; rows of any adapters share each forward."""
        with self.lock, autocast(self.compute):  # adapters can neither vanish nor appear during the forward pass
            metas = [self._meta_for(r.adapter) for r in requests]
            probs = self.kind.predict_proba(self.model, self.tokenizer, [r.text for r in requests], metas,
                                            batch_size, adapter_names=[r.adapter for r in requests])
        return [finite_or_raise(p, meta.domain) for p, meta in zip(probs, metas)]  # NaN is never an answer

    def generate(self, requests: list[PoolRequest], max_new_tokens: int | None = None,
                 batch_size: int = 8) -> list[str]:
        """Per request, the greedy output of its (generation) adapter; rows of any adapters share each
        ``generate`` (peft mixed batches), each after its own adapter's prompt."""
        with self.lock, autocast(self.compute):
            metas = [self._meta_for(r.adapter) for r in requests]
            outputs, _ = write_texts(self.model, self.tokenizer, [r.text for r in requests], metas, batch_size,
                                     max_new_tokens, adapter_names=[r.adapter for r in requests])
        return outputs

    def predict_few_shot(self, text: str, examples: list[tuple[str, str]], labels: list[str], instruction: str,
                         max_text_tokens: int) -> np.ndarray:
        """No adapter, no training: the bare base with labelled examples in the prompt (kinds that offer it)."""
        if not self.kind.few_shot_api:
            raise ConfigError(f"few-shot prompting needs a generative base; this server's base is {self.base_model}")
        with self.lock, autocast(self.compute):
            return self.kind.few_shot_proba(self.model, self.tokenizer, text, examples, labels, instruction,
                                            max_text_tokens)

    def _meta_for(self, name: str) -> AdapterMeta:
        try:
            return self.meta[name]
        except KeyError:
            raise KeyError(f"adapter '{name}' is not in the pool (loaded: {', '.join(self.meta) or 'none'})") from None
