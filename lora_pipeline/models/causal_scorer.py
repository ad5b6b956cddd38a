"""Kind ``causal``: a causal LM that classifies by scoring each label as the continuation of a prompt.

Training: LoRA on the attention projections, the loss on the answer tokens only (label + EOS); the
checkpoint is chosen by validation loss (scoring labels at every evaluation would cost more than the
training). Baselines: the same prompt on the bare base (zero-shot) and with k labelled train examples
(few-shot), both through peft's ``__base__`` rows of the loaded adapter (no second copy of the base).
Serving: no head; each adapter's own prompt and labels, rows of any adapters in one pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from peft import TaskType
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

from lora_pipeline.models.bases import LOAD_LOCK, base_model_path
from lora_pipeline.models.kind import ModelKind
from lora_pipeline.models.prompting import (IGNORE, PromptFormat, answer_ids, build_prompt,
                                            class_weighted_answer_loss, pick_examples, score_labels,
                                            training_example)

if TYPE_CHECKING:
    from lora_pipeline.config import EvaluationInputs, TrainConfig
    from lora_pipeline.models.adapters import AdapterMeta, LoadedAdapter

BASE_ROWS = "__base__"  # peft's adapter name for "no adapter" in a mixed batch


def _causal_lm(spec, cache_dir, dropout: float | None = None) -> torch.nn.Module:
    path = base_model_path(spec.name, cache_dir)
    rates = {} if dropout is None else {"attention_dropout": dropout}  # Llama/Gemma: their only dropout (0 already)
    with LOAD_LOCK:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True, **rates)


class CausalLabelScorer(ModelKind):
    name: ClassVar[str] = "causal"
    task_type = TaskType.CAUSAL_LM
    prompted = True
    checkpoint_metric = "eval_loss"
    greater_is_better = False
    baselines = ("base", "fewshot")
    few_shot_api = True

    def load_base(self, spec, labels, cache_dir, dropout=None):
        return _causal_lm(spec, cache_dir, dropout)  # answers with label tokens: no head to size

    def training_data(self, tokenizer, splits, max_length, instruction, max_answer_tokens=None):
        """Prompt listing the labels -> " label" + EOS; the loss is on the answer tokens only."""
        fmt = PromptFormat(instruction, splits.labels, max_length)

        def examples(split: str) -> list[dict]:
            df = splits.read(split)
            return [training_example(tokenizer, build_prompt(tokenizer, fmt, text), label)
                    for text, label in zip(df["text"], df["label"])]

        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
        return examples("train"), examples("val"), collator

    def loss_function(self, class_weights, tokenizer, labels, train):
        if class_weights is None:
            return None
        return class_weighted_answer_loss({tuple(answer_ids(tokenizer, label)): weight
                                           for label, weight in zip(labels, class_weights)})

    def validation_batch_size(self, train: TrainConfig) -> int:
        return train.batch_size  # the loss needs the full vocabulary's logits at every position

    def predict_proba(self, model, tokenizer, texts, metas: list[AdapterMeta], batch_size, adapter_names=None):
        prompts = [build_prompt(tokenizer, meta.prompt_format(), text) for text, meta in zip(texts, metas)]
        return score_labels(model, tokenizer, prompts, [list(meta.labels) for meta in metas],
                            adapter_names=adapter_names, batch_size=batch_size)

    def prediction_batch_size(self, inputs: EvaluationInputs) -> int:
        return inputs.generative.score_batch_size

    def baseline_predictions(self, adapter: LoadedAdapter, texts, labels, train, inputs: EvaluationInputs):
        gen = inputs.generative
        examples = pick_examples(train["text"].tolist(), train["label"].tolist(), gen.few_shot_k, inputs.seed)
        return {"base": self._prompted(adapter, texts, labels, inputs),
                "fewshot": self._prompted(adapter, texts, labels, inputs, examples)}

    @staticmethod
    def _prompted(adapter: LoadedAdapter, texts, labels, inputs: EvaluationInputs, examples=()) -> list[str]:
        """The bare base (``__base__`` rows of the loaded adapter): its prompt, optionally with examples."""
        fmt = PromptFormat(inputs.generative.instruction, labels, adapter.meta.max_length)
        prompts = [build_prompt(adapter.tokenizer, fmt, text, examples) for text in texts]
        probs = score_labels(adapter.model, adapter.tokenizer, prompts, [labels] * len(texts),
                             adapter_names=[BASE_ROWS] * len(texts), batch_size=inputs.generative.score_batch_size)
        return [labels[int(p.argmax())] for p in probs]

    def pool_base(self, spec, max_labels, cache_dir):
        return _causal_lm(spec, cache_dir)

    @torch.inference_mode()
    def few_shot_proba(self, model, tokenizer, text, examples, labels, instruction, max_text_tokens) -> np.ndarray:
        fmt = PromptFormat(instruction, labels, max_text_tokens)
        [probs] = score_labels(model, tokenizer, [build_prompt(tokenizer, fmt, text, examples)], [labels],
                               adapter_names=[BASE_ROWS])
        return probs
