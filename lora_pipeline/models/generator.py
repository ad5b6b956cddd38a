"""Kind ``causal-generator``: a causal LM that writes a text for each input (task: generate).

Training: prompt (the domain's instruction + the input) -> target + EOS, the loss on the target tokens only;
the checkpoint is chosen by validation loss. Prediction: greedy decoding, prompts sorted by length and
left-padded in batches; with ``adapter_names`` each row runs through its own adapter in the same ``generate``
(peft mixed batches; ``__base__`` rows are the bare base). Baselines: the bare base with the same prompt
(zero-shot) and with k train (input, output) pairs in it (few-shot); the classical one (lead sentence) lives
in evaluation, as TF-IDF does for classifiers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from peft import TaskType
from transformers import DataCollatorForSeq2Seq

from lora_pipeline.models.causal_scorer import BASE_ROWS, CausalLabelScorer, _causal_lm
from lora_pipeline.models.compute import model_device
from lora_pipeline.models.kind import ModelKind
from lora_pipeline.models.prompting import IGNORE
from lora_pipeline.models.text_length import truncate_text

if TYPE_CHECKING:
    from lora_pipeline.config import EvaluationInputs, TrainConfig
    from lora_pipeline.models.adapters import LoadedAdapter

DEFAULT_MAX_NEW_TOKENS = 64  # an adapter saved without its own (generation.max_new_tokens at training time)


@dataclass(frozen=True)
class GenerationPrompt:
    instruction: str  # the domain's, already resolved
    max_text_tokens: int  # an input (and each example's) is cut head+tail to this

    def build(self, tokenizer, text: str, examples: list[tuple[str, str]] = ()) -> str:
        """Instruction, examples, the input; ends where the output is due (the chat template's assistant turn
        when the tokenizer has one: the instruct bases follow their own turn format far better)."""
        cut = self.max_text_tokens
        shots = "".join(f"Text: {truncate_text(tokenizer, t, cut)}\nOutput: {o}\n\n" for t, o in examples)
        request = f"{self.instruction}\n\n{shots}Text: {truncate_text(tokenizer, text, cut)}"
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                                 add_generation_prompt=True) + "Output:"
        return request + "\nOutput:"


def training_example(tokenizer, prompt: str, target: str, max_target_tokens: int) -> dict[str, list[int]]:
    """Prompt + " target" + EOS; the loss sees only the target's tokens and EOS."""
    prompt_ids = tokenizer(prompt).input_ids
    target_ids = tokenizer(f" {target}", add_special_tokens=False).input_ids[:max_target_tokens]
    answer = target_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + answer, "attention_mask": [1] * (len(prompt_ids) + len(answer)),
            "labels": [IGNORE] * len(prompt_ids) + answer}


def pick_pairs(texts: list[str], targets: list[str], k: int, seed: int) -> list[tuple[str, str]]:
    """k (input, output) train pairs for the few-shot prompt, drawn with the run's seed."""
    rng = random.Random(seed)
    return [(texts[i], targets[i]) for i in rng.sample(range(len(texts)), min(k, len(texts)))]


@torch.inference_mode()
def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8,
                   adapter_names: list[str] | None = None) -> tuple[list[str], list[int]]:
    """Greedy outputs for ``prompts`` (in order) and the number of tokens generated for each.

    Prompts of similar length share a batch (less padding); rows are left-padded so every row's next token
    comes from its last position. ``adapter_names`` routes each row through its own adapter."""
    encoded = [tokenizer(p).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    outputs, lengths = [""] * len(prompts), [0] * len(prompts)
    pad, eos, device = tokenizer.pad_token_id, tokenizer.eos_token_id, model_device(model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in idx], device=device)
        attention = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device)
        kwargs = {"adapter_names": [adapter_names[i] for i in idx]} if adapter_names else {}
        generated = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                   do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad, **kwargs)
        for row, i in enumerate(idx):
            new = generated[row, width:].tolist()
            new = new[: new.index(eos)] if eos in new else new
            outputs[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
            lengths[i] = len(new)
    return outputs, lengths


def write_texts(model, tokenizer, texts: list[str], metas: list, batch_size: int, max_new_tokens: int | None = None,
                adapter_names: list[str] | None = None, examples=()) -> tuple[list[str], list[int]]:
    """Each text after its own adapter's prompt (``metas[i]``: instruction and input length), written greedily:
    what evaluation, the pyfunc model and the serving pool all call. ``max_new_tokens``: None = the largest
    length the adapters were saved with."""
    prompts = [GenerationPrompt(meta.instruction, meta.max_length).build(tokenizer, text, examples)
               for text, meta in zip(texts, metas)]
    limit = max_new_tokens or max((meta.max_new_tokens or DEFAULT_MAX_NEW_TOKENS for meta in metas), default=1)
    return generate_texts(model, tokenizer, prompts, limit, batch_size, adapter_names=adapter_names)


class CausalGenerator(ModelKind):
    name: ClassVar[str] = "causal-generator"
    task_type = TaskType.CAUSAL_LM
    prompted = True
    classifies = False
    checkpoint_metric = "eval_loss"
    greater_is_better = False
    baselines = ("base", "fewshot")
    pool_kind = CausalLabelScorer.name  # the same bare causal LM: writers and label scorers share one served base

    def load_base(self, spec, labels, cache_dir, dropout=None):
        return _causal_lm(spec, cache_dir, dropout)

    def training_data(self, tokenizer, splits, max_length, instruction, max_answer_tokens=None):
        prompt = GenerationPrompt(instruction or "", max_length)
        limit = max_answer_tokens or DEFAULT_MAX_NEW_TOKENS

        def examples(split: str) -> list[dict]:
            df = splits.read(split)
            return [training_example(tokenizer, prompt.build(tokenizer, text), target, limit)
                    for text, target in zip(df["text"], df["target"])]

        return examples("train"), examples("val"), DataCollatorForSeq2Seq(tokenizer, padding=True,
                                                                           label_pad_token_id=IGNORE)

    def validation_batch_size(self, train: TrainConfig) -> int:
        return train.batch_size

    def predict_proba(self, model, tokenizer, texts, metas, batch_size, adapter_names=None):
        raise TypeError("a generation adapter writes text; it has no label probabilities")

    def predict(self, adapter: LoadedAdapter, texts: list[str], batch_size: int) -> list[str]:
        return self.generate(adapter, texts, batch_size)[0]

    def generate(self, adapter: LoadedAdapter, texts: list[str], batch_size: int, examples=(),
                 rows: str | None = None) -> tuple[list[str], list[int]]:
        """The adapter's outputs (``rows``: None), or the bare base's (``rows``: BASE_ROWS), for ``texts``."""
        return write_texts(adapter.model, adapter.tokenizer, texts, [adapter.meta] * len(texts), batch_size,
                           adapter_names=[rows] * len(texts) if rows else None, examples=examples)

    def prediction_batch_size(self, inputs: EvaluationInputs) -> int:
        return inputs.generation.batch_size if inputs.generation else 8

    def baseline_predictions(self, adapter: LoadedAdapter, texts, labels, train, inputs: EvaluationInputs):
        batch = self.prediction_batch_size(inputs)
        pairs = pick_pairs(train["text"].tolist(), train["target"].tolist(),
                           inputs.generation.few_shot_k if inputs.generation else 2, inputs.seed)
        return {"base": self.generate(adapter, texts, batch, rows=BASE_ROWS)[0],
                "fewshot": self.generate(adapter, texts, batch, examples=pairs, rows=BASE_ROWS)[0]}

    def pool_base(self, spec, max_labels, cache_dir):
        return _causal_lm(spec, cache_dir)
