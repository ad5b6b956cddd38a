"""Generative mode: classification with a causal LM, by prompting and scoring each label's continuation.

The prompt always lists the domain's labels. A prediction never parses generated text: every label is
scored as a continuation of the prompt, log P(" label" | prompt) summed over its tokens, and a softmax
over the labels gives probabilities, just as the encoder's head does. The same scorer serves the
zero-shot baseline (the bare base), the few-shot baseline (k labelled train examples in the prompt) and
the LoRA adapter, which is trained with the loss on the answer tokens only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from lora_pipeline.models.compute import model_device
from lora_pipeline.models.text_length import truncate_text

IGNORE = -100  # label id the loss skips (prompt and padding tokens)


@dataclass(frozen=True)
class PromptFormat:
    instruction: str  # may contain {labels}
    labels: list[str]
    max_text_tokens: int
    chat: bool = True  # wrap the request in the tokenizer's chat template, when it has one

    def request(self, text: str, examples: list[tuple[str, str]] = ()) -> str:
        shots = "".join(f"Text: {t}\nLabel: {label}\n\n" for t, label in examples)
        return f"{self.instruction.format(labels=', '.join(self.labels))}\n\n{shots}Text: {text}"

    @staticmethod
    def answer(label: str) -> str:
        return f" {label}"


def build_prompt(tokenizer, fmt: PromptFormat, text: str, examples: list[tuple[str, str]] = ()) -> str:
    """The request (instruction listing the labels, examples, text), ending where the label is due."""
    cut = fmt.max_text_tokens
    request = fmt.request(truncate_text(tokenizer, text, cut),
                          [(truncate_text(tokenizer, t, cut), lab) for t, lab in examples])
    if fmt.chat and tokenizer.chat_template:  # an instruct model follows its own turn format far better
        # (SmolLM2 zero-shot on amazon: macro-F1 0.41 in its chat format, 0.28 as plain text)
        return tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                             add_generation_prompt=True) + "Label:"
    return request + "\nLabel:"


def pick_examples(texts: list[str], labels: list[str], k: int, seed: int) -> list[tuple[str, str]]:
    """k train examples, labels taken in turn so every label shows up when k >= the number of labels."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in zip(texts, labels):
        by_label.setdefault(label, []).append(text)
    order = sorted(by_label)
    picked = [(rng.choice(by_label[order[i % len(order)]]), order[i % len(order)]) for i in range(k)]
    rng.shuffle(picked)
    return picked


def answer_ids(tokenizer, label: str) -> list[int]:
    """The tokens a training example answers with: " label" + EOS."""
    return tokenizer(PromptFormat.answer(label), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def training_example(tokenizer, prompt: str, label: str) -> dict[str, list[int]]:
    """Prompt + answer + EOS; the loss sees only the answer and EOS."""
    prompt_ids = tokenizer(prompt).input_ids
    answer = answer_ids(tokenizer, label)
    return {"input_ids": prompt_ids + answer, "attention_mask": [1] * (len(prompt_ids) + len(answer)),
            "labels": [IGNORE] * len(prompt_ids) + answer}


def class_weighted_answer_loss(weight_of_answer: dict[tuple[int, ...], float]):
    """The Trainer's ``compute_loss_func`` for answer-only labels, each example weighed by its label's class
    weight (the causal LM's counterpart of the encoder's weighted cross-entropy): sum(w * token loss) /
    sum(w) over the answer tokens. With every weight 1 it is the model's own loss. ``weight_of_answer``:
    a label's ``answer_ids`` -> its weight; an example's label is read back from its answer tokens."""

    def weight(row: list[int]) -> float:
        answer = tuple(t for t in row if t != IGNORE)
        if answer not in weight_of_answer:
            raise ValueError(f"class weights: answer tokens {answer} are no label's")
        return weight_of_answer[answer]

    def loss(outputs, labels, num_items_in_batch=None):  # one batch: no gradient accumulation to scale for
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        targets = labels[:, 1:]  # position t predicts token t + 1
        answered = targets != IGNORE  # only these logits are read (in fp32), not the prompt's
        token_loss = torch.nn.functional.cross_entropy(logits[:, :-1][answered].float(), targets[answered],
                                                       reduction="none")
        per_row = torch.tensor([weight(row) for row in labels.tolist()], dtype=torch.float32, device=logits.device)
        weights = per_row[:, None].expand_as(targets)[answered]
        return (token_loss * weights).sum() / weights.sum()

    return loss


@torch.inference_mode()
def score_labels(model, tokenizer, prompts: list[str], labels_per_prompt: list[list[str]],
                 adapter_names: list[str] | None = None, batch_size: int = 8) -> list[np.ndarray]:
    """For each prompt, the softmax over its labels of log P(" label" | prompt).

    When every label is one token, each prompt is one row and all labels are read from its next-token
    distribution; otherwise each (prompt, label) is a row and a label's score is the sum of its tokens'
    log-probabilities. Rows are left-padded so they all end at the last position, and the LM head runs
    only there (``logits_to_keep``): the vocabulary projection is a large share of a small LM's cost.
    ``adapter_names`` (one per prompt) routes each row through its own adapter (peft mixed batches;
    "__base__" for none).
    """
    tokenized = [(tokenizer(prompt).input_ids,
                  [tokenizer(PromptFormat.answer(label), add_special_tokens=False).input_ids for label in labels])
                 for prompt, labels in zip(prompts, labels_per_prompt)]
    # Prompts of similar length share a batch (less left padding); results go back in the callers' order.
    order = sorted(range(len(prompts)), key=lambda i: len(tokenized[i][0]))
    out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows = [tokenized[i] for i in idx]  # (prompt token ids, [answer token ids per label])
        seqs, owners = [], []
        if all(len(a) == 1 for _, ids in rows for a in ids):  # one row per prompt reads every label's token
            for r, (prompt_ids, ids) in enumerate(rows):
                seqs.append(prompt_ids)
                owners.append((r, [a[0] for a in ids]))
            scores = _next_token_logprobs(model, tokenizer, seqs, owners, adapter_names, idx)
        else:  # one row per (prompt, label), all ending at the last position
            for r, (prompt_ids, ids) in enumerate(rows):
                for a in ids:
                    seqs.append(prompt_ids + a)
                    owners.append((r, len(a)))
            scores = _answer_logprobs(model, tokenizer, seqs, owners, adapter_names, idx)
        k = 0
        for i, (_, ids) in zip(idx, rows):
            n = len(ids)
            out[i] = torch.softmax(torch.tensor(scores[k : k + n]), dim=0).numpy()
            k += n
    return out


def _left_padded(tokenizer, seqs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift the positions
    return input_ids, attention, positions


def _next_token_logprobs(model, tokenizer, seqs, owners, adapter_names, prompt_index) -> list[float]:
    """Single-token labels: log P(label token | prompt) for each label, one row per prompt."""
    input_ids, attention, positions = _left_padded(tokenizer, seqs, model_device(model))
    kwargs = {"adapter_names": [adapter_names[prompt_index[r]] for r, _ in owners]} if adapter_names else {}
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=1,
                   **kwargs).logits.float().cpu()
    logprobs = torch.log_softmax(logits[:, -1], dim=-1)
    return [logprobs[row, token].item() for row, (_, tokens) in enumerate(owners) for token in tokens]


def _answer_logprobs(model, tokenizer, seqs, owners, adapter_names, prompt_index) -> list[float]:
    """Sum of log-probs of each sequence's last ``length`` tokens, seqs left-padded to one width."""
    keep = max(length for _, length in owners) + 1
    input_ids, attention, positions = _left_padded(tokenizer, seqs, model_device(model))
    width = input_ids.shape[1]
    kwargs = {"adapter_names": [adapter_names[prompt_index[r]] for r, _ in owners]} if adapter_names else {}
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=keep, **kwargs).logits.float().cpu()
    input_ids = input_ids.cpu()
    logprobs = torch.log_softmax(logits, dim=-1)  # (rows, keep, vocab): position j predicts token j+1
    scores = []
    for row, (_, length) in enumerate(owners):
        tokens = input_ids[row, width - length :]
        at = torch.arange(keep - 1 - length, keep - 1)
        scores.append(logprobs[row, at, tokens].sum().item())
    return scores
