"""The data-aware recipe: the sequence length chosen from the data, head+tail truncation, zero-shot
label descriptions for any labels, class weights for imbalanced domains, names from the data, which
checkpoint is kept, and a gate that knows when the classical baseline wins."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lora_pipeline.config import load_config, safe_name
from lora_pipeline.data.prepare import DomainSplits
from lora_pipeline.models.encoder import describe_label
from lora_pipeline.models.text_length import choose_max_length, encode_head_tail, head_tail, truncate_text
from lora_pipeline.registry.promotion import CHALLENGER, CHAMPION, decide_promotion
from lora_pipeline.training.bag_of_words import choose_bag_of_words
from lora_pipeline.training.trainer import class_weights_for


class WordTokenizer:
    """One token per whitespace word, plus [CLS] ... [SEP]: lengths in a test are word counts + 2."""

    def __call__(self, texts, add_special_tokens=True, truncation=False, verbose=True):
        single = isinstance(texts, str)
        ids = [[len(w) for w in t.split()] for t in ([texts] if single else texts)]
        if add_special_tokens:
            ids = [[101, *x, 102] for x in ids]
        out = {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}
        return type("Encoding", (dict,), {"input_ids": property(lambda self: self["input_ids"][0] if single
                                                                else self["input_ids"])})(out)

    def decode(self, ids):
        return " ".join("w" * i for i in ids)


@pytest.mark.parametrize(
    "word_counts, coverage, cap, expected_length, expected_truncated",
    [
        ([10] * 100, 0.95, 256, 16, 0.0),  # short snippets: the 16-token floor
        ([20] * 96 + [500] * 4, 0.95, 256, 24, 0.04),  # p95 = 22 tokens -> 24; the 4 long ones are cut
        (list(range(1, 401)), 0.95, 256, 256, 0.365),  # long documents (3-402 tokens): the cap, the base's budget
        (list(range(1, 401)), 0.5, 256, 208, 0.485),  # p50 = 202.5 tokens -> the next multiple of 8
        ([300] * 10, 1.0, 128, 128, 1.0),  # a fixed length: everything longer is cut
    ],
)
def test_the_length_is_chosen_from_the_token_lengths(word_counts, coverage, cap, expected_length, expected_truncated):
    texts = [" ".join(["w"] * n) for n in word_counts]
    chosen = choose_max_length(WordTokenizer(), texts, coverage, cap)
    assert chosen.max_length == expected_length
    assert chosen.truncated_share == pytest.approx(expected_truncated)
    assert chosen.max_length % 8 == 0 or chosen.max_length == cap


@pytest.mark.parametrize(
    "word_counts, long_share, expected_length, expected_cap",
    [
        ([300] * 80 + [100] * 20, 0.75, 304, 512),  # 80 % longer than the budget: the long-text budget
        ([600] * 90 + [100] * 10, 0.75, 512, 512),  # ... at most that
        ([300] * 70 + [100] * 30, 0.75, 256, 256),  # 70 %: the budget (forum posts, reviews: 23-50 %)
        ([300] * 80 + [100] * 20, 1.0, 256, 256),  # long_text_share 1 = never
    ],
)
def test_most_texts_longer_than_the_budget_get_the_long_text_budget(word_counts, long_share, expected_length,
                                                                     expected_cap):
    texts = [" ".join(["w"] * n) for n in word_counts]
    chosen = choose_max_length(WordTokenizer(), texts, 0.95, 256, long_cap=512, long_share=long_share)
    assert (chosen.max_length, chosen.cap) == (expected_length, expected_cap)


def test_head_tail_truncation_keeps_both_ends():
    ids = list(range(100))
    cut = head_tail(ids, 40)
    assert len(cut) == 40 and cut[:10] == list(range(10)) and cut[10:] == list(range(70, 100))
    assert head_tail(ids, 200) == ids  # short enough: untouched
    # Encoded with special tokens: [CLS] stays first, [SEP] last, every field cut alike.
    [encoded] = encode_head_tail(WordTokenizer(), [" ".join("w" * (i % 7 + 1) for i in range(60))], 20)
    assert encoded["input_ids"][0] == 101 and encoded["input_ids"][-1] == 102
    assert len(encoded["input_ids"]) == len(encoded["attention_mask"]) == 20
    [with_full] = encode_head_tail(WordTokenizer(), [" ".join("w" * (i % 7 + 1) for i in range(60))], 20, "all_ids")
    assert with_full["input_ids"] == encoded["input_ids"] and len(with_full["all_ids"]) == 62  # 60 words + 2 specials
    assert with_full["all_ids"][:5] == encoded["input_ids"][:5]
    assert with_full["all_ids"][-15:] == encoded["input_ids"][-15:]
    text = truncate_text(WordTokenizer(), " ".join("w" * (i % 5 + 1) for i in range(50)), 12)
    assert text.startswith("w ww www") and " ... " in text and text.endswith("wwww wwwww")


@pytest.mark.parametrize(
    "label, expected",
    [
        ("business", "This text is about business."),
        ("credit_card", "This text is about credit card."),
        ("creditCard", "This text is about credit card."),
        ("comp.sys.mac.hardware", "This text is about comp sys mac hardware."),
        ("sci-fi", "This text is about sci fi."),
        ("negative", "This text expresses a negative, unfavourable sentiment."),  # configured ones win
    ],
)
def test_zero_shot_descriptions_are_derived_from_any_label(label, expected):
    eval_cfg = load_config(env={}).eval
    assert describe_label(label, eval_cfg.label_descriptions, eval_cfg.label_template) == expected


def _splits(tmp_path, counts: dict[str, int]) -> DomainSplits:
    rows = [{"text": f"{label} {i}", "label": label} for label, n in counts.items() for i in range(n)]
    pd.DataFrame(rows).to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    return DomainSplits(domain="d", labels=sorted(counts), dir=str(tmp_path), fingerprint="f", counts={"train": len(rows)})


TOPIC_WORDS = {"cars": "engine wheel brake clutch", "bikes": "helmet saddle throttle chain",
               "boats": "sail hull anchor keel"}


def _topic_splits(tmp_path, labels: list[str], lexical: bool) -> DomainSplits:
    """Train and val texts of ``labels``: each label's own words (``lexical``), or every label the same words
    (nothing for TF-IDF to go on: val macro-F1 near chance)."""
    for split, n in (("train", 12), ("val", 6)):
        rows = [{"text": " ".join([TOPIC_WORDS[label if lexical else labels[0]]] * 2 + [f"post {i}"]), "label": label}
                for label in labels for i in range(n)]
        pd.DataFrame(rows).to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
    return DomainSplits(domain="d", labels=labels, dir=str(tmp_path), fingerprint="f", counts={"train": 12 * len(labels)})


@pytest.mark.parametrize("labels, lexical, settings, trained, measured", [
    (["bikes", "boats", "cars"], True, {}, True, True),  # 3 labels whose words tell them apart: topics
    (["bikes", "boats", "cars"], False, {}, False, True),  # the same words for every label: sentiment-like
    (["bikes", "cars"], True, {"bag_of_words_min_tfidf_f1": None}, False, False),  # the label count alone
    (["bikes", "boats", "cars"], False, {"bag_of_words_min_labels": 3}, True, False),  # enough labels: always
    (["bikes", "boats", "cars"], True, {"modules_to_save": ["classifier", "pooler.dense"]}, False, False),
])
def test_a_domain_of_few_labels_gets_the_bag_of_words_term_where_words_tell_its_labels_apart(
        tmp_path, labels, lexical, settings, trained, measured):
    from lora_pipeline.config import LoraSettings

    choice = choose_bag_of_words("all-minilm-l6-v2", LoraSettings(**settings), _topic_splits(tmp_path, labels, lexical))
    assert choice.trained is trained
    assert (choice.tfidf_val_macro_f1 is not None) is measured
    if measured:  # the signal is TF-IDF's validation macro-F1: perfect on topic words, low on shared words
        assert choice.tfidf_val_macro_f1 == (1.0 if lexical else pytest.approx(1 / 3, abs=0.2))
        assert f"validation macro-F1 {choice.tfidf_val_macro_f1:.3f}" in choice.reason


@pytest.mark.parametrize(
    "counts, setting, expected",
    [
        ({"neg": 50, "neu": 50, "pos": 50}, "auto", None),  # balanced: plain loss
        ({"neg": 40, "neu": 5, "pos": 35}, "auto", [80 / 120, 80 / 15, 80 / 105]),  # VADER movie-like: weighted
        ({"neg": 40, "neu": 5, "pos": 35}, "none", None),
        ({"neg": 50, "pos": 50}, "balanced", [1.0, 1.0]),
    ],
)
def test_imbalanced_domains_get_balanced_class_weights(tmp_path, counts, setting, expected):
    train = load_config(overrides=[f"train.class_weights={setting}"], env={}).train
    weights = class_weights_for(_splits(tmp_path, counts), train)
    assert weights == (None if expected is None else pytest.approx(expected, abs=1e-4))


@pytest.mark.parametrize(
    "values, expected",
    [
        ({}, "vader"),  # the built-in set
        ({"data.path": "/data/reviews.parquet"}, "reviews"),  # a user's file: its stem
        ({"data.path": "/data/my reviews #1.csv"}, "my-reviews-1"),  # sanitised for MLflow
        ({"data.path": "/data/reviews.csv", "data.name": "shop"}, "shop"),  # --name wins
    ],
)
def test_models_are_named_after_the_data(values, expected):
    assert load_config(values=values, env={}).dataset_name == expected
    assert safe_name(expected) == expected


@pytest.mark.parametrize(
    "adapter, base, margin, tfidf, tolerance, alias, says",
    [
        (0.75, 0.40, 0.02, 0.78, 0.0, CHALLENGER, "TF-IDF beats the adapter on movie (0.78 vs 0.75)"),
        (0.75, 0.40, 0.02, 0.78, 0.05, CHAMPION, "not beaten by more than 0.0500"),  # within the tolerance
        (0.78, 0.40, 0.02, 0.78, 0.0, CHAMPION, "TF-IDF+LR 0.7800"),  # a tie is not a loss
        (0.45, 0.40, 0.10, 0.30, 0.0, CHALLENGER, "gain +0.0500 < margin 0.1000"),  # beats TF-IDF, not the base
    ],
)
def test_the_gate_knows_the_classical_baseline(adapter, base, margin, tfidf, tolerance, alias, says):
    decision = decide_promotion(adapter, base, margin=margin, tfidf_f1=tfidf, tfidf_tolerance=tolerance,
                                domain="movie")
    assert decision.alias == alias
    assert says in decision.reason
    if "TF-IDF beats" in says:
        assert decision.reason.startswith(f"{CHALLENGER}: TF-IDF beats the adapter")  # said first, plainly


def test_the_run_summary_states_tfidf_wins_and_the_row_cap():
    from types import SimpleNamespace

    from lora_pipeline.evaluation.evaluate import DomainEvaluation
    from lora_pipeline.reporting.report import findings, summary_rows

    def result(adapter, tfidf, rows, available, accuracy_gain=0.0, metric="macro_f1"):
        trained = SimpleNamespace(train_seconds=60.0, adapter_size_bytes=1024, max_length=256, truncated_share=0.3,
                                  train_rows=rows, train_rows_available=available)
        metrics = {m: {"macro_f1": f, "accuracy": f + accuracy_gain * (m == "adapter")}
                   for m, f in (("adapter", adapter), ("base", 0.3), ("tfidf", tfidf))}
        evaluation = DomainEvaluation(domain="d", labels=["a", "b"], n_test=100, metrics=metrics, latency_p50_ms=1.0,
                                      latency_p95_ms=1.0, throughput_per_s=1.0, artifacts_dir="")
        registered = SimpleNamespace(is_new=True, model_name="m", version="1", alias="challenger", metric=metric)
        return trained, evaluation, registered

    rows = summary_rows({"movie": result(0.75, 0.78, 800, 8000), "nyt": result(0.70, 0.30, 500, 500)}, {},
                        {"tiny": "domain 'tiny' has 10 rows, fewer than split.min_rows_per_domain=30"})
    assert findings(rows) == ["movie: TF-IDF beats the adapter on movie (0.78 vs 0.75); trained on 800 of 8000 "
                              "train rows (all rows: ~10 min; --set split.max_train_rows=0)",
                              "tiny: domain 'tiny' has 10 rows, fewer than split.min_rows_per_domain=30"]
    assert rows[-1]["status"] == "left out: too little data"  # a domain the data had too little of is in the table
    # promotion.metric: accuracy: the table and the finding read accuracy (there the adapter wins).
    [row] = summary_rows({"movie": result(0.75, 0.78, 800, 800, accuracy_gain=0.1, metric="accuracy")}, {})
    assert (row["adapter_accuracy"], row["tfidf_accuracy"], row["finding"]) == (0.85, 0.78, "")
    assert "adapter_macro_f1" not in row


@pytest.mark.parametrize("n_train, overrides, expected", [
    (800, [], (150, 50)),  # VADER's cap: 3 epochs of 50 steps
    (374, [], (150, 24)),  # 374 reviews: 24 steps an epoch; 3 epochs (72 steps) stretched to train.min_steps
    (80, [], (50, 5)),  # a tiny domain: at most 10 epochs, however few its steps
    (2000, [], (375, 125)),  # more rows than the cap's: train.epochs as set
    (374, ["train.min_steps=0"], (72, 24)),  # the rule off: exactly train.epochs
    (374, ["train.max_steps=7"], (7, 7)),  # max_steps wins over everything
])
def test_small_domains_get_more_epochs_up_to_min_steps(n_train, overrides, expected):
    from lora_pipeline.training.trainer import _schedule

    assert _schedule(n_train, load_config(overrides=overrides, env={}).train) == expected


class _TinyClassifier:
    """A 2-feature linear classifier for the HF Trainer: what it learns does not matter here, only which of
    its checkpoints the Trainer keeps."""

    @staticmethod
    def build():
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(2, 2)

            def forward(self, x, labels=None):
                logits = self.linear(x)
                return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

        return Model()


@pytest.mark.parametrize("val_scores, tolerance, kept_step", [
    ([0.80, 0.84, 0.83, 0.83], 0.02, 4),  # the last one within one text (0.02) of the best
    ([0.80, 0.84, 0.83, 0.83], 0.0, 2),  # no tolerance: HF's strictly best
    ([0.84, 0.84], 0.02, 2),  # a tie: the later
    ([0.84, 0.84], 0.0, 1),  # ... HF: the earlier
    ([0.80, 0.84, 0.81, 0.83], 0.02, 4),  # 0.81 is more than one text below: not kept; 0.83 is
    ([0.84, 0.80, 0.79], 0.02, 1),  # nothing later comes close
    ([0.84, 0.825, 0.83, 0.81], 0.02, 3),  # measured from the best (0.84), never from a kept 0.825
])
def test_a_later_checkpoint_within_tolerance_of_the_best_is_kept(tmp_path, val_scores, tolerance, kept_step):
    import torch
    from transformers import Trainer, TrainingArguments

    from lora_pipeline.training.trainer import KeepLaterWithinTolerance

    rows = [{"x": torch.tensor([float(i), 1.0]), "labels": i % 2} for i in range(8)]
    scores = iter(val_scores)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=len(val_scores), per_device_train_batch_size=4,
                             eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                             save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="macro_f1",
                             greater_is_better=True, use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = Trainer(model=_TinyClassifier.build(), args=args, train_dataset=rows, eval_dataset=rows[:2],
                      compute_metrics=lambda _: {"macro_f1": next(scores)},
                      callbacks=[KeepLaterWithinTolerance(tolerance)] if tolerance else [])
    trainer.train()
    assert trainer.state.best_global_step == kept_step
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{kept_step}")  # the weights loaded at the end
    assert Path(trainer.state.best_model_checkpoint).is_dir()  # ... and still there to load
    assert trainer.state.best_metric == pytest.approx(val_scores[kept_step - 1])


@pytest.mark.parametrize("base, overrides, expected", [
    ("all-minilm-l6-v2", [], [("KeepLaterWithinTolerance", 0.02), ("EarlyStoppingAfterMinSteps", 1)]),
    ("all-minilm-l6-v2", ["train.checkpoint_tie_texts=2"], [("KeepLaterWithinTolerance", 0.04),
                                                           ("EarlyStoppingAfterMinSteps", 1)]),
    ("all-minilm-l6-v2", ["train.checkpoint_tie_texts=0"], [("EarlyStoppingAfterMinSteps", 1)]),
    ("all-minilm-l6-v2", ["train.early_stopping_patience=0"], [("KeepLaterWithinTolerance", 0.02)]),
    ("smollm2-135m", [], [("EarlyStoppingAfterMinSteps", 1)]),  # kept by validation loss: no text count
])
def test_checkpoint_callbacks_follow_the_kind_and_the_config(base, overrides, expected):
    from lora_pipeline.models import kind_of
    from lora_pipeline.training.trainer import checkpoint_callbacks

    train = load_config(overrides=overrides, env={}).train
    callbacks = checkpoint_callbacks(kind_of(base, "classify"), train, total_steps=150, n_val=50)
    assert [(type(c).__name__, getattr(c, "tolerance", getattr(c, "early_stopping_patience", None)))
            for c in callbacks] == expected


@pytest.mark.parametrize("base, overrides, expected", [
    ("all-minilm-l6-v2", [], 512),  # 80 % of the texts longer than 256: MiniLM's long-text budget
    ("all-minilm-l6-v2", ["base.max_length_cap=256"], 256),  # a cap the user set is the cap
    ("all-minilm-l6-v2", ["base.long_text_share=1"], 256),  # the rule off
    ("all-minilm-l6-v2", ["base.max_length=128"], 128),  # a fixed length
    ("smollm2-135m", [], 256),  # causal bases keep their CPU budget
])
def test_resolve_max_length_uses_the_long_text_budget_of_the_base(tmp_path, base, overrides, expected):
    from lora_pipeline.training.trainer import resolve_max_length

    texts = [" ".join(["w"] * 600)] * 80 + ["w w w"] * 20
    pd.DataFrame({"text": texts, "label": ["a", "b"] * 50}).to_json(tmp_path / "train.jsonl", orient="records",
                                                                   lines=True)
    splits = DomainSplits(domain="d", labels=["a", "b"], dir=str(tmp_path), fingerprint="f", counts={"train": 100})
    base_cfg = load_config(overrides=[f"base.name={base}", *overrides], env={}).base
    assert resolve_max_length(WordTokenizer(), splits, base_cfg).max_length == expected


@pytest.mark.parametrize("budgets", [{"length_budget": 256}, {"length_budget": 64, "long_text_budget": 512}])
def test_a_base_cannot_promise_more_tokens_than_its_positions(budgets):
    from lora_pipeline.models.bases import BaseModelSpec

    with pytest.raises(ValueError, match="exceeds its 128 positions"):
        BaseModelSpec(name="small", kind="encoder", package="", module="", params_millions=1.0, lora_targets=("q",),
                      modules_to_save=(), max_positions=128, **budgets)
