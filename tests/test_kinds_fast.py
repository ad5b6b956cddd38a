"""Fast tier: every model kind's train / predict / pool path on tiny random bases, and the MicroBatcher.

Tables of cases run against tiny real transformers models built here (a 2-layer BERT and a 2-layer
Llama, ``tests/tiny_models.py``), registered as bases like any other; nothing is mocked. It proves, per
kind: a trained adapter is saved with its kind and reloads to the very probabilities of the model that
was trained; training moves only the LoRA (and fully-trained) parameters; the causal kind's loss sees
only the answer; a pool's mixed-adapter batches give each row what its adapter alone gives, also after
another adapter is removed. Then device and precision: the ``auto`` choice per machine, bf16 training
that saves fp32 weights, bf16 prediction and a bf16 pool close to fp32 and to each adapter alone, on the
CPU and (where torch sees one) on CUDA. And that the MicroBatcher merges, splits, fails and stops as
documented.
The whole file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends
from transformers import TrainerCallback

from safetensors.torch import load_file

from lora_pipeline.config import Compute, DataConfig, LoraSettings, SplitConfig, TrainConfig, load_config
from lora_pipeline.data.prepare import prepare_data
from lora_pipeline.models import KINDS, kind_of
from lora_pipeline.models.adapters import AdapterMeta, LoadedAdapter, build_lora_model, load_adapter, save_adapter
from lora_pipeline.errors import ConfigError
from lora_pipeline.models.bases import BASE_MODELS, load_tokenizer
from lora_pipeline.models.compute import choose_compute, cpu_bf16, model_device, training_attention
from lora_pipeline.models.encoder import (BAG_OF_WORDS_IDS, BAG_OF_WORDS_SCALE, BagOfWords, classifier_loss,
                                          fit_logistic_term, inverse_document_frequency, padded_batches, token_counts)
from lora_pipeline.models.prompting import IGNORE
from lora_pipeline.models.text_length import head_tail
from lora_pipeline.provenance import training_inputs
from lora_pipeline.serving.adapter_pool import AdapterPool, PoolRequest
from lora_pipeline.serving.batching import MicroBatcher
from lora_pipeline.serving.stacked_lora import StackedLoraLinear
from lora_pipeline.training import trainer as trainer_module
from lora_pipeline.training.trainer import train_adapter
from tests.tiny_models import (TINY_CAUSAL, TINY_ENCODER, TINY_SENTENCE_ENCODER, build_tiny_causal, build_tiny_encoder,
                               tiny_sentence_encoder)

TEXTS = ["Great value, works as described.", "Terrible.", "The committee met on Tuesday to discuss the budget.",
         "meh", "I love it, honestly the best purchase of the year!"]
INSTRUCTION = "Classify the sentiment of this text as one of: {labels}."
MAX_LENGTH = 32
# Domains of the generated data set. "weather" has multi-token labels (causal: one row per label) of
# equal token counts, so that their scores are not dominated by their lengths.
DOMAIN_LABELS = {
    "yesno": ["no", "yes"],
    "stars": ["one", "two", "three", "four", "five"],
    "sentiment": ["negative", "neutral", "positive"],
    "weather": ["cold", "cool", "warm"],
}


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # the kind name the base must resolve to
    base: str
    domain: str

    @property
    def labels(self) -> list[str]:
        return sorted(DOMAIN_LABELS[self.domain])


CASES = [
    Case("encoder-2-labels", "encoder", TINY_ENCODER, "yesno"),
    Case("encoder-5-labels", "encoder", TINY_ENCODER, "stars"),
    Case("sentence-encoder-3-labels", "sentence-encoder", TINY_SENTENCE_ENCODER, "sentiment"),
    Case("causal-1-token-labels", "causal", TINY_CAUSAL, "sentiment"),
    Case("causal-multi-token-labels", "causal", TINY_CAUSAL, "weather"),
]
CAUSAL_CASES = [c for c in CASES if c.kind == "causal"]
by_id = {"ids": lambda c: c.id}


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bases(tmp_path_factory):
    """Both tiny bases, registered in BASE_MODELS for this module only."""
    root = tmp_path_factory.mktemp("tiny-bases")
    encoder = build_tiny_encoder(root / "encoder")
    specs = [encoder, tiny_sentence_encoder(encoder), build_tiny_causal(root / "causal")]
    with pytest.MonkeyPatch.context() as mp:
        for spec in specs:
            mp.setitem(BASE_MODELS, spec.name, spec)
        yield {spec.name: spec for spec in specs}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Real prepared splits of a generated table: 40 distinct rows per label in every domain."""
    root = tmp_path_factory.mktemp("data")
    rows = [{"text": f"Row {i} of {domain}: this one reads as {label}, more or less ({i * 7 % 13}).",
             "label": label, "domain": domain}
            for domain, labels in DOMAIN_LABELS.items() for label in labels for i in range(40)]
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    split_cfg = SplitConfig(max_train_rows=24, max_val_rows=10, max_test_rows=10)
    return prepare_data(root / "data.csv", DataConfig(path=str(root / "data.csv")), split_cfg, root / "prepared").domains


def _inputs(base: str, precision: str = "fp32", *overrides: str):
    cfg = load_config(overrides=[f"base.name={base}", f"base.max_length={MAX_LENGTH}", "train.max_steps=3",
                                 "train.batch_size=4", "train.learning_rate=0.01", f"runtime.precision={precision}",
                                 *overrides],
                      values={"generative.instruction": INSTRUCTION}, env={})
    return training_inputs(cfg)


@dataclass
class Training:
    """One ``train_adapter`` run, with the LoRA model it built (and its parameters before training)."""
    result: object  # TrainedAdapter
    model: torch.nn.Module
    before: dict[str, tuple[torch.Tensor, bool]] = field(default_factory=dict)  # name -> (value, requires_grad)


@pytest.fixture(scope="module")
def trained(tiny_bases, splits, tmp_path_factory):
    """case id -> its Training, run once on first use. ``build_lora_model`` and ``save_adapter`` are
    wrapped (both still run) only to see the model that train_adapter builds and saves."""
    runs: dict[str, Training] = {}

    def run(case: Case) -> Training:
        if case.id in runs:
            return runs[case.id]
        seen: dict = {}

        def build_and_snapshot(*args, **kwargs):
            model = build_lora_model(*args, **kwargs)
            seen["before"] = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
            return model

        def save_and_keep(model, meta, adapter_dir):
            seen["model"] = model
            return save_adapter(model, meta, adapter_dir)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer_module, "build_lora_model", build_and_snapshot)
            mp.setattr(trainer_module, "save_adapter", save_and_keep)
            result = train_adapter(splits[case.domain], _inputs(case.base), tmp_path_factory.mktemp(case.id))
        runs[case.id] = Training(result, seen["model"], seen["before"])
        return runs[case.id]

    return run


def _assert_probabilities(probs: np.ndarray, n_rows: int, labels: list[str]) -> None:
    assert probs.shape == (n_rows, len(labels))
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


# --- 1. train -> save -> load -> predict ----------------------------------------------------------
@pytest.mark.parametrize("case", CASES, **by_id)
def test_trained_adapter_reloads_to_the_probabilities_of_the_trained_model(case, trained):
    assert kind_of(case.base) is KINDS[case.kind]
    run = trained(case)
    adapter_dir = Path(run.result.adapter_dir)
    assert run.result.steps == 3 and run.result.labels == case.labels
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    meta = json.loads((adapter_dir / "adapter_meta.json").read_text())
    assert meta["kind"] == case.kind and meta["labels"] == case.labels and meta["base_model"] == case.base
    assert meta["instruction"] == (INSTRUCTION if KINDS[case.kind].prompted else "")

    loaded = load_adapter(adapter_dir)
    probs = loaded.predict_proba(TEXTS)
    _assert_probabilities(probs, len(TEXTS), case.labels)
    in_memory = LoadedAdapter(meta=loaded.meta, model=run.model.eval(), tokenizer=loaded.tokenizer)
    np.testing.assert_allclose(in_memory.predict_proba(TEXTS), probs, atol=1e-5)  # saved = trained
    np.testing.assert_allclose(load_adapter(adapter_dir).predict_proba(TEXTS), probs, atol=1e-5)  # deterministic
    direct = KINDS[case.kind].predict_proba(loaded.model, loaded.tokenizer, TEXTS, [loaded.meta] * len(TEXTS),
                                            batch_size=2)  # other batches, other padding
    np.testing.assert_allclose(np.stack(direct), probs, atol=1e-5)
    assert loaded.predict(TEXTS) == [case.labels[i] for i in probs.argmax(axis=1)]
    # Batches are sorted by length inside predict_proba: each row must still be its own text's answer.
    one_by_one = np.concatenate([loaded.predict_proba([text]) for text in TEXTS])
    np.testing.assert_allclose(one_by_one, probs, atol=1e-5)


# --- 2. training changes only the adapter ---------------------------------------------------------
def _is_adapter_param(name: str) -> bool:
    return "lora_" in name or ".modules_to_save." in name


@pytest.mark.parametrize("case", CASES, **by_id)
def test_training_moves_only_lora_and_saved_modules(case, trained, splits):
    run = trained(case)
    trainable = {name for name, (_, grad) in run.before.items() if grad}
    assert trainable == {name for name in run.before if _is_adapter_param(name)}
    assert any("lora_B" in name for name in trainable)
    assert any(".modules_to_save." in name for name in trainable) == (case.kind != "causal")  # the head
    assert run.result.trainable_params == sum(run.before[n][0].numel() for n in trainable)
    assert run.result.fitted == {}  # the default lora.bag_of_words_fit 'trained': nothing fitted before training

    after = {name: p.detach().cpu() for name, p in run.model.named_parameters()}  # trained on cuda, if there is one
    assert after.keys() == run.before.keys()
    changed_base = [n for n, (value, grad) in run.before.items() if not grad and not torch.equal(after[n], value)]
    assert changed_base == []
    assert any(not torch.equal(after[n], run.before[n][0]) for n in trainable if "lora_B" in n)  # it did train
    # Encoders of >= 4 labels: from 0, the term trains; of fewer, where words tell the labels apart on val
    # (training/bag_of_words.py: TF-IDF's validation macro-F1, measured only there); causal LMs: never.
    few_labels = case.kind != "causal" and len(case.labels) < 4
    assert (run.result.bag_of_words_tfidf_val_f1 is not None) == few_labels
    expected = case.kind != "causal" and (not few_labels or run.result.bag_of_words_tfidf_val_f1 >= 0.85)
    bag_of_words = [n for n in trainable if "bag_of_words" in n]
    assert run.result.bag_of_words is expected and len(bag_of_words) == expected
    for name in bag_of_words:
        assert not run.before[name][0].any() and after[name].any()
    if bag_of_words:  # its idf: the train split's, saved with the adapter (and none where the term is not trained)
        texts = splits[case.domain].read("train")["text"].tolist()
        train_ids = load_tokenizer(case.base)(texts).input_ids  # the whole texts: what the term reads
        idf = inverse_document_frequency(train_ids, run.model.config.vocab_size)
        assert idf.ne(1).any()
        saved = load_file(Path(run.result.adapter_dir) / "adapter_model.safetensors")
        assert [torch.equal(v, idf) for k, v in saved.items() if k.endswith("bag_of_words.idf")] == [True]
    else:
        saved = load_file(Path(run.result.adapter_dir) / "adapter_model.safetensors")
        assert not any(k.endswith(".idf") for k in saved)


def test_token_counts_count_each_rows_real_tokens():
    """Padding is not a token of the text, so a row's counts do not depend on its batch."""
    ids = torch.tensor([[5, 7, 7, 0, 0], [7, 5, 7, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    counts = token_counts(ids, mask, vocab_size=10)
    assert counts[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 2, 0, 0]
    assert counts[1].tolist() == [0, 0, 0, 0, 0, 1, 0, 2, 0, 2]
    torch.testing.assert_close(token_counts(ids[:1, :3], mask[:1, :3], vocab_size=10)[0], counts[0])


def test_bag_of_words_term_is_tfidf_features_then_a_linear_map():
    """log(1 + count) x idf, L2-normalised, scaled, times the weights; a token of idf 0 (in no train text) is
    left out, so it does not shrink the others."""
    term = BagOfWords(vocab_size=4, num_labels=2)
    with torch.no_grad():
        term.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 2.0], [0.0, 1.0, -2.0, 3.0]]))
        term.idf.copy_(torch.tensor([1.0, 2.0, 1.5, 0.0]))
    counts = torch.tensor([[1.0, 3.0, 0.0, 0.0], [1.0, 3.0, 0.0, 5.0]])
    tfidf = torch.log1p(counts[0]) * term.idf
    expected = BAG_OF_WORDS_SCALE * tfidf / tfidf.norm() @ term.weight.T
    out = term(counts)
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], expected)  # the unseen token 3 changes nothing


def test_idf_is_scikit_learns_smooth_idf_and_zero_for_unseen_tokens():
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [[1, 2, 2, 3], [2, 4], [1, 2, 5, 5]]
    idf = inverse_document_frequency(docs, vocab_size=8)
    vectorizer = TfidfVectorizer(analyzer=lambda doc: doc).fit(docs)  # the token ids are the terms
    for token, column in vectorizer.vocabulary_.items():
        assert idf[token].item() == pytest.approx(vectorizer.idf_[column], rel=1e-6)
    assert idf[[0, 6, 7]].tolist() == [0, 0, 0]


class _TokenRows:
    """What fit_logistic_term reads of a kind's encoded split: each row's token ids, and the labels."""

    def __init__(self, rows: list[tuple[list[int], int]]):
        self.features = [{BAG_OF_WORDS_IDS: ids} for ids, _ in rows]
        self.labels = [label for _, label in rows]


# Label i is told by token 2 + i (tokens 0, 1: words every row has). Label 3 of 4 has no train rows.
_KEYWORD_ROWS = [([0, 1, 2 + label, 2 + label], label) for label in (0, 1, 2) for _ in range(6)]


@pytest.mark.parametrize("n_labels, rows", [(4, _KEYWORD_ROWS), (2, [r for r in _KEYWORD_ROWS if r[1] < 2])],
                         ids=["4-labels-one-without-rows", "2-labels"])
def test_the_logistic_term_is_scikit_learns_regression_on_the_terms_features(n_labels, rows):
    from sklearn.linear_model import LogisticRegression

    term = BagOfWords(vocab_size=8, num_labels=n_labels)
    torch.nn.init.zeros_(term.weight)
    with torch.no_grad():
        term.idf.copy_(inverse_document_frequency([ids for ids, _ in rows], 8))
    c = fit_logistic_term(term, _TokenRows(rows), _TokenRows(rows[::3]))
    assert c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    counts = torch.stack([token_counts(torch.tensor([ids]), torch.ones(1, len(ids)), 8)[0] for ids, _ in rows])
    features = term.features(counts).numpy()
    expected = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", fit_intercept=False).fit(
        features, [label for _, label in rows]).decision_function(features)
    logits = term(counts).detach().numpy()
    if n_labels == 2:  # one decision value: the difference of the two logits
        np.testing.assert_allclose(logits[:, 1] - logits[:, 0], expected, rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(logits[:, :3], expected, rtol=1e-4, atol=1e-5)
        assert not term.weight[3].any()  # no train rows: no weights
    assert (logits.argmax(axis=1) == [label for _, label in rows]).all()
    assert c == 100.0  # perfectly separable rows: the loosest fit has the lowest validation log-loss


@pytest.mark.parametrize("fit, fitted_and_fixed", [("logistic", True), ("trained", False)])
def test_lora_bag_of_words_fit_chooses_a_fixed_fitted_term_or_one_that_trains(fit, fitted_and_fixed, tiny_bases,
                                                                               splits):
    lora = LoraSettings(bag_of_words_fit=fit)
    model = build_lora_model(TINY_ENCODER, DOMAIN_LABELS["stars"], lora)  # 5 labels: the term is in the adapter
    kind, tokenizer = KINDS["encoder"], load_tokenizer(TINY_ENCODER)
    train_ds, val_ds, _ = kind.training_data(tokenizer, splits["stars"], MAX_LENGTH, None)
    fitted = kind.fit_to_train_data(model, train_ds, val_ds, lora)
    term = next(m.weight for n, m in model.named_modules() if n.endswith("modules_to_save.default")
                and isinstance(m, BagOfWords))
    assert bool(term.any()) == fitted_and_fixed and term.requires_grad == (not fitted_and_fixed)
    assert ("bag_of_words_c" in fitted) == fitted_and_fixed


def test_a_logistic_term_is_fitted_saved_and_not_trained(tiny_bases, splits, tmp_path):
    """lora.bag_of_words_fit logistic through train_adapter: the chosen C is recorded, the term is saved with
    the adapter as fitted, and it is not among the trained parameters."""
    fixed = train_adapter(splits["stars"], _inputs(TINY_ENCODER, "fp32", "lora.bag_of_words_fit=logistic"),
                          tmp_path / "logistic")
    trains = train_adapter(splits["stars"], _inputs(TINY_ENCODER), tmp_path / "trained")
    assert set(fixed.fitted) == {"bag_of_words_c"} and trains.fitted == {}
    saved = load_file(Path(fixed.adapter_dir) / "adapter_model.safetensors")
    term = [v for k, v in saved.items() if k.endswith("bag_of_words.weight")]
    assert len(term) == 1 and term[0].shape[0] == 5 and term[0].any()
    assert trains.trainable_params - fixed.trainable_params == term[0].numel()  # 5 labels x the vocabulary


@pytest.mark.parametrize("base", [TINY_ENCODER, TINY_SENTENCE_ENCODER])
def test_a_fresh_bag_of_words_term_adds_nothing(base, tiny_bases):
    """Zero until trained, whatever transformers' initialisation does to new weights: an adapter saved without
    the term (lora.modules_to_save without bag_of_words) predicts as the head alone."""
    model = KINDS[tiny_bases[base].kind].load_base(tiny_bases[base], ["a", "b", "c"], None)
    assert not model.bag_of_words.weight.any() and model.bag_of_words.idf.eq(1).all()


@pytest.mark.parametrize("base", [TINY_ENCODER, TINY_SENTENCE_ENCODER])
def test_the_bag_of_words_term_reads_the_whole_text_the_encoder_its_head_and_tail(base, tiny_bases):
    model = KINDS[tiny_bases[base].kind].load_base(tiny_bases[base], ["a", "b", "c"], None).eval()
    torch.nn.init.normal_(model.bag_of_words.weight, std=0.5)
    tokenizer = load_tokenizer(base)
    text = " ".join(["one of many words in a long text"] * 8)
    [(_, batch)] = padded_batches(tokenizer, [text], [MAX_LENGTH], batch_size=1, device="cpu", term_reads=["all"])
    assert batch["input_ids"][0].tolist() == head_tail(tokenizer(text).input_ids, MAX_LENGTH)
    assert batch["bag_of_words_ids"][0].tolist() == tokenizer(text).input_ids  # all of it
    read = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}

    def term(ids):
        return model.bag_of_words(token_counts(ids, torch.ones_like(ids), model.config.vocab_size))

    with torch.no_grad():
        expected = model(**read).logits - term(batch["input_ids"]) + term(batch["bag_of_words_ids"])
        torch.testing.assert_close(model(**batch).logits, expected)
        assert not torch.allclose(term(batch["input_ids"]), term(batch["bag_of_words_ids"]))


def _ce(logits, labels, weight=None):
    return torch.nn.functional.cross_entropy(logits, labels, weight=weight).item()


HEAD = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, -0.2], [-1.0, 0.0, 1.5]])
TERM = torch.tensor([[-0.5, 1.0, 0.0], [1.5, -0.3, 0.2], [0.0, 2.0, -1.0]])
Y = torch.tensor([0, 2, 1])
W = torch.tensor([1.0, 3.0, 0.5])


@pytest.mark.parametrize("term_trains, branch_weight, class_weights, expected", [
    (True, 0.0, None, _ce(HEAD + TERM, Y)),  # the sum's loss only
    (True, 0.5, None, _ce(HEAD + TERM, Y) + 0.5 * (_ce(HEAD, Y) + _ce(TERM, Y))),
    (True, 1.0, W, _ce(HEAD + TERM, Y, W) + _ce(HEAD, Y, W) + _ce(TERM, Y, W)),  # each weighted by class
    (False, 1.0, W, _ce(HEAD + TERM, Y, W)),  # a term left out of training: no branch losses
])
def test_the_loss_scores_the_sum_and_each_branch_alone(term_trains, branch_weight, class_weights, expected):
    term = TERM.clone().requires_grad_(term_trains)
    outputs = {"logits": HEAD + term, "term_logits": term}
    assert classifier_loss(outputs, Y, class_weights, branch_weight).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("base", [TINY_ENCODER, TINY_SENTENCE_ENCODER])
def test_the_terms_own_logits_are_an_output_only_in_training(base, tiny_bases):
    """The loss needs the term's logits apart; the Trainer's evaluation takes every output as a prediction."""
    model = KINDS[tiny_bases[base].kind].load_base(tiny_bases[base], ["a", "b", "c", "d"], None)
    torch.nn.init.normal_(model.bag_of_words.weight, std=0.5)
    batch = load_tokenizer(base)(["a short text", "another one, longer"], padding=True, return_tensors="pt")
    train_out = model.train()(**batch)
    assert list(train_out.keys()) == ["logits", "term_logits"] and train_out.term_logits.abs().sum() > 0
    eval_out = model.eval()(**batch)
    assert list(eval_out.keys()) == ["logits"]


# --- 3. the causal kind's loss sees only the answer -----------------------------------------------
@pytest.mark.parametrize("case", CAUSAL_CASES, **by_id)
def test_causal_training_examples_mask_the_prompt(case, tiny_bases, splits):
    kind, tokenizer, domain = KINDS[case.kind], load_tokenizer(case.base), splits[case.domain]
    answer_lengths = {len(tokenizer(" " + label, add_special_tokens=False).input_ids) for label in case.labels}
    assert (answer_lengths == {1}) == (case.id == "causal-1-token-labels")  # both scoring paths are covered
    train_ds, val_ds, _ = kind.training_data(tokenizer, domain, MAX_LENGTH, INSTRUCTION)
    for split, examples in (("train", train_ds), ("val", val_ds)):
        labels_of_rows = domain.read(split)["label"].tolist()
        assert len(examples) == len(labels_of_rows)
        for example, label in zip(examples, labels_of_rows):
            answer = tokenizer(" " + label, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            prompt_len = len(example["input_ids"]) - len(answer)
            assert example["labels"] == [IGNORE] * prompt_len + answer
            assert example["input_ids"][prompt_len:] == answer
            assert tokenizer.decode(example["input_ids"][:prompt_len]).endswith("Label:")


@pytest.mark.parametrize("case", CAUSAL_CASES, **by_id)
def test_causal_class_weights_weigh_each_example_by_its_label(case, tiny_bases, splits):
    """train.class_weights reaches the causal LM: its loss weighs each example's answer tokens by the class
    weight of its label. Weights of 1 give the model's own loss; others, the weighted mean of each example's
    own token losses (each computed alone, unpadded)."""
    kind, tokenizer, domain = KINDS[case.kind], load_tokenizer(case.base), splits[case.domain]
    train_ds, _, collator = kind.training_data(tokenizer, domain, MAX_LENGTH, INSTRUCTION)
    labels_of_rows = domain.read("train")["label"].tolist()
    first = [labels_of_rows.index(label) for label in case.labels]
    rows = first[::-1] + first[:1]  # every label, not in label order, one twice: weights follow labels, not rows
    torch.manual_seed(0)
    model = kind.load_base(tiny_bases[case.base], case.labels, None).eval()

    def own_loss_sum(example) -> tuple[float, int]:  # the model's mean token loss x its answer tokens
        n = sum(t != IGNORE for t in example["labels"][1:])
        batch = {k: torch.tensor([v]) for k, v in example.items()}
        return float(model(**batch).loss) * n, n

    batch = collator([train_ds[i] for i in rows])
    labels = batch.pop("labels")
    with torch.no_grad():
        outputs = model(**batch)
        alone = [own_loss_sum(train_ds[i]) for i in rows]
        losses = []
        for weights in ([1.0] * len(case.labels), [0.5 + 2 * i for i in range(len(case.labels))]):
            losses.append(float(kind.loss_function(weights, tokenizer, case.labels, TrainConfig())(outputs, labels)))
            of_row = [weights[case.labels.index(labels_of_rows[i])] for i in rows]
            expected = sum(w * s for w, (s, _) in zip(of_row, alone)) / sum(w * n for w, (_, n) in zip(of_row, alone))
            assert losses[-1] == pytest.approx(expected, rel=1e-5)
    assert losses[1] != pytest.approx(losses[0], rel=1e-4)  # the weights did change the loss
    assert kind.loss_function(None, tokenizer, case.labels, TrainConfig()) is None  # balanced classes: the model's own loss


# --- 4. the pool: mixed-adapter batches -----------------------------------------------------------
POOL_CASES = [("encoder", TINY_ENCODER, ["yesno", "stars"]),
              ("sentence-encoder", TINY_SENTENCE_ENCODER, ["yesno", "sentiment"]),
              ("causal", TINY_CAUSAL, ["sentiment", "weather"])]


def _random_adapter(root: Path, base: str, domain: str, seed: int) -> Path:
    """An untrained adapter whose LoRA B matrices (and head) are random: far from the base."""
    kind = kind_of(base)
    labels = sorted(DOMAIN_LABELS[domain])
    torch.manual_seed(seed)
    model = build_lora_model(base, labels, LoraSettings())
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    meta = AdapterMeta(domain, labels, base, MAX_LENGTH, kind=kind.name,
                       instruction=INSTRUCTION if kind.prompted else "")
    return save_adapter(model, meta, root / domain)


@pytest.mark.parametrize("kind_name, base, domains", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pool_mixed_batches_equal_each_adapter_alone(kind_name, base, domains, tiny_bases, tmp_path):
    dirs = {d: _random_adapter(tmp_path, base, d, seed) for seed, d in enumerate(domains, 1)}
    alone = {}
    for d, path in dirs.items():
        adapter = load_adapter(path)
        alone[d] = adapter.predict_proba(TEXTS)
        with adapter.model.disable_adapter():  # the adapter matters: the bare base answers otherwise
            bare = np.stack(adapter.kind.predict_proba(adapter.model, adapter.tokenizer, TEXTS,
                                                       [adapter.meta] * len(TEXTS), batch_size=8))
        assert np.abs(bare - alone[d]).max() > 1e-3

    pool = AdapterPool(base, LoraSettings(), max_labels=8)
    assert pool.kind.name == kind_name
    for d, path in dirs.items():
        pool.add(d, path)
    requests = [PoolRequest(d, text) for text in TEXTS for d in domains]  # rows of both adapters interleaved

    def pooled(reqs: list[PoolRequest]) -> dict[str, np.ndarray]:
        probs = pool.predict_proba(reqs, batch_size=len(reqs))  # one forward pass for all rows
        return {d: np.stack([p for r, p in zip(reqs, probs) if r.adapter == d])
                for d in dict.fromkeys(r.adapter for r in reqs)}

    mixed = pooled(requests)
    for d in domains:
        assert mixed[d].shape == (len(TEXTS), len(DOMAIN_LABELS[d]))  # cut back to its own labels
        np.testing.assert_allclose(mixed[d], alone[d], atol=1e-5)

    gone, kept = domains
    pool.remove(gone)
    assert gone not in pool.names and gone not in pool.model.peft_config
    with pytest.raises(KeyError, match=gone):
        pool.predict_proba([PoolRequest(gone, TEXTS[0])])
    after = pooled([r for r in requests if r.adapter == kept])
    np.testing.assert_allclose(after[kept], mixed[kept], atol=1e-6)


# --- 5. precision and device -----------------------------------------------------------------------
COMPUTE_CASES = [  # (requested device, precision, capabilities) -> chosen, or the error's words
    ("auto", "auto", dict(cuda=False, cuda_bf16=False, cpu_bf16=True), ("cpu", "bf16")),
    ("auto", "auto", dict(cuda=False, cuda_bf16=False, cpu_bf16=False), ("cpu", "fp32")),
    ("auto", "auto", dict(cuda=True, cuda_bf16=True, cpu_bf16=False), ("cuda", "fp32")),  # measured faster there
    ("auto", "bf16", dict(cuda=True, cuda_bf16=True, cpu_bf16=False), ("cuda", "bf16")),
    ("auto", "bf16", dict(cuda=True, cuda_bf16=False, cpu_bf16=True), "no native bf16"),  # an old GPU
    ("cpu", "auto", dict(cuda=True, cuda_bf16=True, cpu_bf16=True), ("cpu", "bf16")),
    ("auto", "fp32", dict(cuda=True, cuda_bf16=True, cpu_bf16=True), ("cuda", "fp32")),
    ("cuda", "auto", dict(cuda=False, cuda_bf16=False, cpu_bf16=True), "no CUDA device"),
    ("cpu", "bf16", dict(cuda=False, cuda_bf16=False, cpu_bf16=False), "no native bf16"),
]


@pytest.mark.parametrize("device, precision, caps, expected", COMPUTE_CASES,
                         ids=[f"{d}-{p}-{'-'.join(k for k, v in c.items() if v) or 'plain'}" for d, p, c, _ in COMPUTE_CASES])
def test_choose_compute(device, precision, caps, expected):
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            choose_compute(device, precision, **caps)
    else:
        chosen = choose_compute(device, precision, **caps)
        assert (chosen.device, chosen.precision) == expected


ATTENTION_CASES = [  # (device, precision, batch width, the base's math_up_to) -> attention as plain matrix products?
    ("cpu", "bf16", 48, 128, True),
    ("cpu", "bf16", 128, 128, True),
    ("cpu", "bf16", 129, 128, False),  # long batches: the fused kernel is faster
    ("cpu", "bf16", 48, 0, False),  # a base not measured keeps torch's choice
    ("cpu", "fp32", 48, 128, False),  # fp32: the fused kernel is as fast or faster at every length measured
    ("cuda", "bf16", 48, 128, False),  # a GPU has kernels of its own
]


@pytest.mark.parametrize("device, precision, width, math_up_to, math_only", ATTENTION_CASES,
                         ids=[f"{d}-{p}-{w}-upto{u}" for d, p, w, u, _ in ATTENTION_CASES])
def test_training_attention_picks_the_math_backend_for_short_bf16_cpu_batches(device, precision, width, math_up_to,
                                                                              math_only):
    before = _cur_sdpa_kernel_backends()
    with training_attention(Compute(device=device, precision=precision), width, math_up_to):
        inside = _cur_sdpa_kernel_backends()
    assert (inside == [SDPBackend.MATH]) == math_only
    assert _cur_sdpa_kernel_backends() == before  # a process-wide setting: given back after the step


@pytest.mark.skipif(not cpu_bf16(), reason="this CPU has no native bf16")
def test_bf16_cpu_training_steps_use_math_attention_and_evaluation_does_not(tiny_bases, splits, tmp_path):
    seen = []  # (training?, backends) at each forward of the model

    class WatchForwards(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(lambda m, _: seen.append((m.training, _cur_sdpa_kernel_backends())))

    spec = tiny_bases[TINY_ENCODER]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BASE_MODELS, TINY_ENCODER, replace(spec, cpu_bf16_math_attention_up_to=MAX_LENGTH))
        inputs = _inputs(TINY_ENCODER, "bf16").model_copy(update={"compute": Compute(device="cpu", precision="bf16")})
        train_adapter(splits[CASES[1].domain], inputs, tmp_path, callbacks=[WatchForwards()])
    training = [backends for is_training, backends in seen if is_training]
    evaluation = [backends for is_training, backends in seen if not is_training]
    assert len(training) == 3 and all(b == [SDPBackend.MATH] for b in training)  # train.max_steps=3
    assert evaluation and all(b != [SDPBackend.MATH] for b in evaluation)  # torch's own choice


def _devices_with_bf16() -> list:
    """The devices of this machine with native bf16 (the CUDA case runs only on a GPU machine)."""
    return [pytest.param("cpu", marks=pytest.mark.skipif(not cpu_bf16(), reason="this CPU has no native bf16")),
            pytest.param("cuda", marks=pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
                                                          reason="no CUDA device with bf16"))]


@pytest.mark.parametrize("device", _devices_with_bf16())
@pytest.mark.parametrize("case", [CASES[1], CASES[3]], **by_id)  # the default encoder kind and a causal LM
def test_bf16_training_saves_fp32_weights_and_predicts_like_fp32(case, device, tiny_bases, splits, tmp_path):
    inputs = _inputs(case.base, "bf16")
    inputs = inputs.model_copy(update={"compute": Compute(device=device, precision="bf16")})
    result = train_adapter(splits[case.domain], inputs, tmp_path)
    assert (result.precision, result.device) == ("bf16", device)
    weights = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
    assert weights and {t.dtype for t in weights.values()} == {torch.float32}  # loads anywhere, in any precision

    fp32 = load_adapter(result.adapter_dir).predict_proba(TEXTS)
    bf16 = load_adapter(result.adapter_dir, compute=Compute(device=device, precision="bf16"))
    assert model_device(bf16.model).type == device
    probs = bf16.predict_proba(TEXTS)
    _assert_probabilities(probs, len(TEXTS), case.labels)
    assert np.abs(probs - fp32).max() < 0.05  # bf16 keeps ~3 significant digits: close, not equal
    assert np.abs(probs - fp32).max() > 0  # and it did run in bf16


@pytest.mark.parametrize("device", _devices_with_bf16())
@pytest.mark.parametrize("kind_name, base, domains", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_bf16_pool_on_each_device_answers_as_each_adapter_alone(kind_name, base, domains, device, tiny_bases, tmp_path):
    compute = Compute(device=device, precision="bf16")
    pool = AdapterPool(base, LoraSettings(), max_labels=8, compute=compute)
    dirs = {d: _random_adapter(tmp_path, base, d, seed) for seed, d in enumerate(domains, 1)}
    for d, path in dirs.items():
        pool.add(d, path)
    assert {p.device.type for p in pool.model.parameters()} == {device}
    requests = [PoolRequest(d, text) for text in TEXTS for d in domains]
    mixed = pool.predict_proba(requests, batch_size=len(requests))
    for d, path in dirs.items():
        alone = load_adapter(path, compute=compute).predict_proba(TEXTS)
        got = np.stack([p for r, p in zip(requests, mixed) if r.adapter == d])
        np.testing.assert_allclose(got, alone, atol=0.02)  # bf16: other padding, other rounding


@pytest.mark.skipif(not cpu_bf16(), reason="this CPU has no native bf16")
@pytest.mark.parametrize("kind_name, base, domains", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_bf16_pool_stores_linear_weights_in_bf16_and_answers_bit_for_bit_as_fp32_weights(kind_name, base, domains,
                                                                                        tiny_bases, tmp_path):
    pool = AdapterPool(base, LoraSettings(), max_labels=8, compute=Compute(device="cpu", precision="bf16"))
    for seed, d in enumerate(domains, 1):
        pool.add(d, _random_adapter(tmp_path, base, d, seed))
    adapted = [m.base_layer for m in pool.model.modules() if isinstance(m, StackedLoraLinear)]
    assert adapted and {m.weight.dtype for m in adapted} == {torch.bfloat16}  # cast once, not in every forward
    embeddings = [m.weight for m in pool.model.modules() if isinstance(m, torch.nn.Embedding)]
    assert {w.dtype for w in embeddings} == {torch.float32}  # and a head tied to them too (the causal LM's)
    requests = [PoolRequest(d, text) for text in TEXTS for d in domains]
    stored_bf16 = pool.predict_proba(requests, batch_size=len(requests))

    for p in pool.model.parameters():  # the same pool with fp32 weights: autocast casts them in each forward
        p.data = p.data.float()
    fp32_weights = pool.predict_proba(requests, batch_size=len(requests))
    for got, expected in zip(stored_bf16, fp32_weights):
        np.testing.assert_array_equal(got, expected)


# --- 6. MicroBatcher ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatcherCase:
    id: str
    max_batch: int
    waves: list[list[list[int]]]  # requests submitted concurrently; each wave after the previous one ends
    batches: list[list[int]]  # what run_batch must receive, in order
    failing_waves: tuple[int, ...] = ()  # waves whose requests all fail (a negative item fails its batch)
    stop_between_waves: bool = False


BATCHER_CASES = [
    BatcherCase("concurrent-small-requests-share-one-batch", 8, [[[1], [2, 3], [4], [5, 6]]], [[1, 2, 3, 4, 5, 6]]),
    BatcherCase("batches-close-at-max-batch", 2, [[[1], [2], [3], [4]]], [[1, 2], [3, 4]]),
    BatcherCase("oversized-request-runs-alone", 4, [[[1, 2, 3, 4, 5, 6], [7]]], [[1, 2, 3, 4, 5, 6], [7]]),
    BatcherCase("a-request-that-does-not-fit-opens-the-next-batch", 4, [[[1], [2, 3, 4, 5, 6, 7], [8]]],
                [[1], [2, 3, 4, 5, 6, 7], [8]]),
    BatcherCase("never-more-than-max-batch-when-requests-fit", 4, [[[1, 2], [3], [4, 5], [6]]], [[1, 2, 3], [4, 5, 6]]),
    BatcherCase("a-failure-reaches-its-whole-batch-only", 8, [[[1], [-1], [2]], [[3]]], [[1, -1, 2], [3]],
                failing_waves=(0,)),
    BatcherCase("stop-ends-the-worker-and-a-new-submit-restarts-it", 8, [[[1, 2]], [[3]]], [[1, 2], [3]],
                stop_between_waves=True),
]


def _workers() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "micro-batcher" and not t.done()]


@pytest.mark.parametrize("case", BATCHER_CASES, ids=lambda c: c.id)
def test_micro_batcher(case):
    calls: list[list[int]] = []

    def run_batch(items: list[int]) -> list[int]:
        calls.append(list(items))
        if any(x < 0 for x in items):
            raise ValueError(f"bad item in {items}")
        return [x * 2 for x in items]

    async def scenario() -> None:
        batcher = MicroBatcher(run_batch, max_batch=case.max_batch, wait_ms=30)
        for w, wave in enumerate(case.waves):
            results = await asyncio.gather(*(batcher.submit(req) for req in wave), return_exceptions=True)
            for request, result in zip(wave, results):
                if w in case.failing_waves:
                    assert isinstance(result, ValueError) and "bad item" in str(result)
                else:
                    assert result == [x * 2 for x in request]  # its own results, in order
            if case.stop_between_waves:
                await batcher.stop()
                assert _workers() == []
        assert len(_workers()) == (0 if case.stop_between_waves else 1)
        await batcher.stop()
        assert _workers() == []
        flat = [x for batch in case.batches for x in batch]
        assert batcher.stats == {"batches": len(case.batches), "texts": len(flat),
                                 "largest_batch": max(map(len, case.batches))}

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert calls == case.batches


# --- 6. concurrent training is safe and reproducible ----------------------------------------------
def test_domains_trained_in_parallel_threads_equal_domains_trained_one_after_the_other(tiny_bases, splits, tmp_path):
    """Two domains trained at once (as the flow's thread runner does) give bit-identical adapters to the
    same domains trained one after the other: training takes turns, and seeds at its start."""
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file

    domains = ["yesno", "stars"]

    def train(root: Path, domain: str) -> Path:
        return Path(train_adapter(splits[domain], _inputs(TINY_ENCODER), root / domain).adapter_dir)

    one_by_one = [train(tmp_path / "sequential", d) for d in domains]
    with ThreadPoolExecutor(max_workers=2) as pool:
        at_once = list(pool.map(lambda d: train(tmp_path / "parallel", d), domains))
    for a, b in zip(one_by_one, at_once):
        first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
