"""The classical baseline a classification adapter must not lose to: TF-IDF (word 1-2 grams) + logistic
regression, tuned the way the adapter is.

It trains on the same train rows as the adapter, weights classes by inverse frequency (as
``train.class_weights: auto`` weights an imbalanced domain's loss), and picks its one hyperparameter, C, on
the validation split by macro-F1 (as the adapter's best epoch is picked). The untuned scikit-learn default
(C=1, no class weights) is a weak opponent on imbalanced data and made the promotion gate too easy: test
macro-F1 on the default splits, untuned -> tuned, IMDB 0.664 -> 0.798, tweets 0.350 -> 0.589, MedMCQA
subjects 0.036 -> 0.176 (``benchmarks/bench_classical.py``; README, "The classical baseline").
"""

from __future__ import annotations

import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import Pipeline

from lora_pipeline.config import EvalConfig
from lora_pipeline.evaluation.metrics import classification_metrics


def _macro_f1(y_true, y_pred) -> float:
    return classification_metrics(y_true, y_pred, sorted(set(y_true)))["macro_f1"]


def macro_f1_scorer():
    """Macro-F1 exactly as the test metric and the adapter's epoch choice count it
    (``metrics.classification_metrics``: over the labels with true rows)."""
    return make_scorer(_macro_f1)


def _unfitted(train: pd.DataFrame, class_weight: str) -> tuple[TfidfVectorizer, sp.csr_matrix, LogisticRegression]:
    """The vectoriser fitted on ``train`` (word 1-2 grams, sublinear tf), ``train`` vectorised, and the classifier
    to fit on it."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(train["text"])
    classifier = LogisticRegression(max_iter=2000, class_weight=None if class_weight == "none" else class_weight)
    return vectorizer, vectorizer.transform(train["text"]), classifier


def _best_c(vectorizer: TfidfVectorizer, x_train: sp.csr_matrix, classifier: LogisticRegression,
            train: pd.DataFrame, val: pd.DataFrame, grid: list[float]) -> tuple[float, float]:
    """The C of ``grid`` with the best validation macro-F1 (ties: the smallest C, the strongest prior), and
    that macro-F1. The vocabulary is the train split's either way, so it is fitted once and only C is searched:
    one fold, train -> val (PredefinedSplit: -1 = always train), no refit on train + val."""
    x = sp.vstack([x_train, vectorizer.transform(val["text"])])
    y = pd.concat([train["label"], val["label"]])
    fold = PredefinedSplit([-1] * len(train) + [0] * len(val))
    search = GridSearchCV(classifier, {"C": sorted(set(grid))}, scoring=macro_f1_scorer(),
                          cv=fold, refit=False, error_score="raise").fit(x, y)
    return float(search.best_params_["C"]), float(search.best_score_)


def fit_tfidf(train: pd.DataFrame, val: pd.DataFrame, cfg: EvalConfig) -> Pipeline:
    """TF-IDF + logistic regression fitted on ``train``, with C (``cfg.tfidf_c_grid``) chosen on ``val``."""
    vectorizer, x_train, classifier = _unfitted(train, cfg.tfidf_class_weight)
    grid = sorted(set(cfg.tfidf_c_grid))
    c = _best_c(vectorizer, x_train, classifier, train, val, grid)[0] if len(grid) > 1 else grid[0]
    classifier.set_params(C=c).fit(x_train, train["label"])
    return Pipeline([("tfidf", vectorizer), ("logreg", classifier)])


def tfidf_val_macro_f1(train: pd.DataFrame, val: pd.DataFrame, grid: list[float],
                       class_weight: str = "balanced") -> float:
    """How well words alone tell a domain's labels apart: the validation macro-F1 of TF-IDF + logistic
    regression trained on ``train``, at its best C of ``grid``. Seconds for a few labels and 800 texts."""
    vectorizer, x_train, classifier = _unfitted(train, class_weight)
    return _best_c(vectorizer, x_train, classifier, train, val, grid)[1]
