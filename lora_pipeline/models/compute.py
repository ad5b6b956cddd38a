"""Where models run and in what precision: ``runtime.device`` / ``runtime.precision`` resolved once per run.

``auto`` device: CUDA when torch sees a GPU, else the CPU. ``auto`` precision is what measured faster
for this product's workloads (``make bench``, fp32 against bf16 in one run; README, Speed):
- a CPU with native bf16 (avx512_bf16 or AMX): bf16 autocast;
- CUDA: fp32. On an H100 the default recipe (MiniLM, batch 16, ~48 tokens) is bound by kernel launches,
  not by matrix products, and autocast's extra cast kernels made a LoRA step 1.3-1.5x and the pipeline
  1.4-1.7x slower than fp32 (two runs). ``runtime.precision: bf16`` still asks for it (large bases, long
  texts, big batches);
- anything else: fp32.
Under bf16 the weights stay fp32 (autocast runs the matrix products in bf16), so a saved adapter is
fp32 and loads anywhere.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from lora_pipeline.config import Compute, RuntimeConfig
from lora_pipeline.errors import ConfigError


def cpu_bf16() -> bool:
    """The CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def capabilities() -> dict[str, bool]:
    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "cuda_bf16": cuda and torch.cuda.is_bf16_supported(), "cpu_bf16": cpu_bf16()}


def choose_compute(device: str, precision: str, *, cuda: bool, cuda_bf16: bool, cpu_bf16: bool) -> Compute:
    """The device and precision for the requested ones on a machine with these capabilities."""
    chosen = ("cuda" if cuda else "cpu") if device == "auto" else device
    if chosen == "cuda" and not cuda:
        raise ConfigError("runtime.device=cuda: no CUDA device is visible to torch")
    native = cuda_bf16 if chosen == "cuda" else cpu_bf16
    if precision == "bf16" and not native:
        raise ConfigError(f"runtime.precision=bf16: this {chosen} has no native bf16 (use auto or fp32)")
    if precision == "auto":
        precision = "bf16" if chosen == "cpu" and native else "fp32"  # measured: see the module docstring
    return Compute(device=chosen, precision=precision)


@functools.cache
def resolve_compute(device: str = "auto", precision: str = "auto") -> Compute:
    """:func:`choose_compute` on this machine (decided once per process for the same request)."""
    return choose_compute(device, precision, **capabilities())


def compute_for(runtime: RuntimeConfig) -> Compute:
    """runtime.device / runtime.precision resolved on this machine: what the pipeline, the benchmarks and the
    server all run in."""
    return resolve_compute(runtime.device, runtime.precision)


def autocast(compute: Compute) -> contextlib.AbstractContextManager:
    """bf16 autocast on the compute's device, or nothing under fp32."""
    if compute.precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(compute.device, dtype=torch.bfloat16)


def training_attention(compute: Compute, width: int, math_up_to: int) -> contextlib.AbstractContextManager:
    """SDPA's math backend (attention as plain matrix products) for a bf16 training batch on a CPU that is at
    most ``math_up_to`` tokens wide (``BaseModelSpec.cpu_bf16_math_attention_up_to``), else torch's own choice.
    Torch's fused CPU attention kernel is fast in fp32 and for long sequences, but its bf16 backward on short
    ones took over half of a MiniLM step at 48 tokens. The backend is a process-wide torch setting: training
    holds it for one step at a time, in its own process in the pipeline. On a Dask worker training shares its
    process, so an evaluation overlapping a training step may run on the math backend too (slower; in bf16 a
    last-digit difference in scores)."""
    if compute.device != "cpu" or compute.precision != "bf16" or width > math_up_to:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


def store_for_autocast(model: torch.nn.Module, compute: Compute) -> torch.nn.Module:
    """A frozen model that only predicts under bf16 autocast keeps its Linear weights and biases in bf16.
    Autocast runs every Linear in bf16 anyway, and it re-casts frozen fp32 weights in every forward (its
    cache holds only weights that require grad): the outputs are bit-identical, with one cast instead of
    one per forward (the serving pool: 0.87-0.92x the time, 2026-12-06, README Serving). Weights tied to an
    embedding (a causal LM's head) stay fp32, as does everything else (embeddings, norms)."""
    if compute.precision != "bf16":
        return model
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in tied:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.bfloat16)
    return model


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def describe(compute: Compute) -> str:
    """'bf16 autocast on cpu' / 'fp32 on cuda (NVIDIA H100 ...)': what runs and logs say."""
    where = compute.device
    if compute.device == "cuda" and torch.cuda.is_available():
        where += f" ({torch.cuda.get_device_name()})"
    return f"{'bf16 autocast' if compute.precision == 'bf16' else 'fp32'} on {where}"
