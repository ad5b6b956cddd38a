"""StackedLoraLinear (the serving pool's LoRA layer): a mixed-adapter batch gives every row what peft gives
that row with its adapter alone, for adapters of different ranks and scalings, bare-base rows, deleted
adapters, and adapters it leaves to peft's own loop. Tiny random models built here."""

from __future__ import annotations

import contextlib

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from lora_pipeline.models.causal_scorer import BASE_ROWS
from lora_pipeline.serving.stacked_lora import StackedLoraLinear, restack

BASES = {  # name -> (model, LoRA targets, modules trained in full)
    "bert-classifier": (lambda: BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)),
        ["query", "value"], ["classifier"]),
    "llama-causal": (lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2)), ["q_proj", "v_proj"], None),
}
ADAPTERS = {"r2": dict(r=2, lora_alpha=4), "r4": dict(r=4, lora_alpha=4), "rslora": dict(r=4, lora_alpha=8, use_rslora=True)}
ROWS = ["r2", "r4", BASE_ROWS, "rslora", "r4", "r2"]  # one forward pass, rows in any order


def _model(base: str, adapters: dict[str, dict]) -> PeftModel:
    make, targets, full = BASES[base]
    torch.manual_seed(0)
    configs = {name: LoraConfig(target_modules=targets, modules_to_save=full, lora_dropout=0.0, **kw)
               for name, kw in adapters.items()}
    first, *rest = configs
    configs[first]._register_custom_module({torch.nn.Linear: StackedLoraLinear})  # as the pool does
    model = get_peft_model(make(), configs[first], adapter_name=first)
    for name in rest:
        model.add_adapter(name, configs[name])
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:  # every adapter far from the base and from the others
            torch.nn.init.normal_(param, std=0.2)
    restack(model)
    return model.eval()


def _alone(model: PeftModel, ids: torch.Tensor, name: str) -> torch.Tensor:
    """One row through peft's ordinary (unmixed) path with only ``name`` active."""
    if name == BASE_ROWS:
        with model.disable_adapter():
            return model(input_ids=ids).logits
    model.set_adapter(name)
    return model(input_ids=ids).logits


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-5), ("bf16", 1e-2)])
@pytest.mark.parametrize("base", list(BASES))
def test_mixed_rows_equal_each_adapter_alone(base, precision, atol):
    model = _model(base, ADAPTERS)
    stacked = [m for m in model.modules() if isinstance(m, StackedLoraLinear)]
    assert len(stacked) == 4 and all(m._stacks is not None for m in stacked)  # the batched path, not peft's loop
    ids = torch.randint(0, 100, (len(ROWS), 7))
    with torch.inference_mode(), _autocast(precision):
        mixed = model(input_ids=ids, adapter_names=ROWS).logits.float()
        alone = torch.cat([_alone(model, ids[i : i + 1], name) for i, name in enumerate(ROWS)]).float()
    torch.testing.assert_close(mixed, alone, atol=atol, rtol=0)
    assert (mixed[0] - mixed[2]).abs().max() > 0.1  # an adapter's row is not the bare base's (logits ~0.5)


def test_a_deleted_adapter_leaves_the_others_right_after_restack():
    model = _model("bert-classifier", ADAPTERS)
    model.delete_adapter("r4")
    restack(model)
    rows = ["r2", "rslora", BASE_ROWS]
    ids = torch.randint(0, 100, (3, 7))
    with torch.inference_mode():
        mixed = model(input_ids=ids, adapter_names=rows).logits
        alone = torch.cat([_alone(model, ids[i : i + 1], name) for i, name in enumerate(rows)])
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=0)


def test_an_adapter_with_a_lora_bias_is_left_to_peft_and_still_right():
    model = _model("llama-causal", {"plain": dict(r=2, lora_alpha=4), "biased": dict(r=2, lora_alpha=4, lora_bias=True)})
    assert all(m._stacks is None for m in model.modules() if isinstance(m, StackedLoraLinear))
    rows = ["biased", "plain"]
    ids = torch.randint(0, 100, (2, 5))
    with torch.inference_mode():
        mixed = model(input_ids=ids, adapter_names=rows).logits
        alone = torch.cat([_alone(model, ids[i : i + 1], name) for i, name in enumerate(rows)])
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=0)
