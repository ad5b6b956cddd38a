"""Whether a domain's encoder trains the bag-of-words term beside its LoRA head, decided from its data.

The term (``lora_pipeline.models.encoder.BagOfWords``) gives the head what TF-IDF + logistic regression has, the
identity of the words. It lifts domains whose labels are topics and costs domains whose labels are shades of
sentiment in short texts, where word counts mislead ("not bad"). Two measured signals decide (README, Held-out):
- the label count: the held-out domains of 4-20 labels gained from it (forum topics, shop departments, exam
  subjects, star ratings; Reddit's posts lost ~0.01 to its first version and gained with the branch losses),
  so from ``lora.bag_of_words_min_labels`` labels it always trains;
- below that, how well words alone tell the labels apart: TF-IDF + logistic regression's macro-F1 on the
  validation split. Forum topics of 2-3 groups reached 0.86-0.98 and lost to TF-IDF without the term; VADER's
  sentiment snippets and drug reviews reached 0.43-0.63 and lost with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_pipeline.config import LoraSettings
from lora_pipeline.data.prepare import DomainSplits
from lora_pipeline.evaluation.classical import tfidf_val_macro_f1
from lora_pipeline.models.adapters import lora_settings_for
from lora_pipeline.models.encoder import BAG_OF_WORDS, BAG_OF_WORDS_C_GRID


@dataclass(frozen=True)
class BagOfWordsChoice:
    """``trained``: the domain's adapter has the term. ``reason``: why, in words (logged on its run).
    ``tfidf_val_macro_f1``: the signal, where it was measured."""

    trained: bool
    reason: str
    tfidf_val_macro_f1: float | None = None


def choose_bag_of_words(base_model: str, lora: LoraSettings, splits: DomainSplits) -> BagOfWordsChoice:
    """The term for ``splits``' domain: never where the base's (or the config's) lora.modules_to_save lacks it;
    always from lora.bag_of_words_min_labels labels; below that, where TF-IDF + LR reaches
    lora.bag_of_words_min_tfidf_f1 on validation."""
    if BAG_OF_WORDS not in lora_settings_for(base_model, lora).modules_to_save:  # causal bases: never
        return BagOfWordsChoice(False, "not in lora.modules_to_save")
    if not splits.labels:  # task: generate (only a config that forces the module gets here)
        return BagOfWordsChoice(False, "no labels (task: generate)")
    n_labels = len(splits.labels)
    if n_labels >= lora.bag_of_words_min_labels:
        return BagOfWordsChoice(True, f"{n_labels} labels >= lora.bag_of_words_min_labels "
                                      f"({lora.bag_of_words_min_labels})")
    below = f"{n_labels} labels < lora.bag_of_words_min_labels ({lora.bag_of_words_min_labels})"
    if lora.bag_of_words_min_tfidf_f1 is None:
        return BagOfWordsChoice(False, below)
    f1 = tfidf_val_macro_f1(splits.read("train"), splits.read("val"), list(BAG_OF_WORDS_C_GRID))
    verdict = ">=" if f1 >= lora.bag_of_words_min_tfidf_f1 else "<"
    return BagOfWordsChoice(f1 >= lora.bag_of_words_min_tfidf_f1,
                            f"{below}; TF-IDF + LR validation macro-F1 {f1:.3f} {verdict} "
                            f"lora.bag_of_words_min_tfidf_f1 ({lora.bag_of_words_min_tfidf_f1})", f1)
