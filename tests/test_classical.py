"""The classical baseline (TF-IDF + logistic regression): C picked on validation, classes balanced, and the
untuned scikit-learn default one setting away. Tiny synthetic texts built here."""

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline

from lora_pipeline.config import EvalConfig
from lora_pipeline.evaluation.classical import fit_tfidf


def _texts(n_per_label: dict[str, int], seed: int, overlap: float = 0.7) -> pd.DataFrame:
    """Texts of 12 words: each word from the label's own 10 words with probability 1 - overlap, else from
    30 words every label shares."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, n in n_per_label.items():
        for _ in range(n):
            words = [f"{label}{rng.integers(10)}" if rng.random() > overlap else f"w{rng.integers(30)}"
                     for _ in range(12)]
            rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


def _macro_f1(model, df):
    return f1_score(df["label"], model.predict(df["text"]), average="macro")


# Two string labels too: scikit-learn's scorers have tripped on those (pos_label=1), and a failed score
# would have kept the first C quietly.
@pytest.mark.parametrize("labels", [{"a": 40, "b": 40, "c": 40}, {"neg": 60, "pos": 40}])
def test_c_is_the_grid_value_with_the_best_validation_macro_f1(labels):
    train, val = _texts(labels, 0, overlap=0.85), _texts(labels, 1, overlap=0.85)
    grid = [0.01, 0.1, 1.0, 10.0, 100.0]
    scores = {c: _macro_f1(fit_tfidf(train, val, EvalConfig(tfidf_c_grid=[c])), val) for c in grid}
    assert len(set(scores.values())) > 1  # the grid matters on this data, or the test would prove nothing

    model = fit_tfidf(train, val, EvalConfig(tfidf_c_grid=grid))
    best = max(scores.values())
    assert model.named_steps["logreg"].C == min(c for c in grid if scores[c] == best)  # ties: the stronger prior
    # Fitted on train only: a word that only the validation rows have is not in the vocabulary.
    val_only = set(" ".join(val["text"]).split()) - set(" ".join(train["text"]).split())
    assert not val_only & set(model.named_steps["tfidf"].vocabulary_)


def test_one_c_and_no_weights_is_scikit_learns_default():
    train, test = _texts({"a": 30, "b": 10}, 2), _texts({"a": 30, "b": 10}, 3)
    default = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                            LogisticRegression(max_iter=2000)).fit(train["text"], train["label"])
    ours = fit_tfidf(train, test, EvalConfig(tfidf_c_grid=[1.0], tfidf_class_weight="none"))
    assert ours.predict(test["text"]).tolist() == default.predict(test["text"]).tolist()


def test_balanced_weights_find_a_rare_class_the_default_misses():
    counts = {"common": 150, "rare": 8}
    train, val, test = (_texts(counts, seed, overlap=0.8) for seed in (4, 5, 6))
    untuned = fit_tfidf(train, val, EvalConfig(tfidf_c_grid=[1.0], tfidf_class_weight="none"))
    tuned = fit_tfidf(train, val, EvalConfig())
    assert "rare" not in set(untuned.predict(test["text"]))
    assert "rare" in set(tuned.predict(test["text"]))
    assert _macro_f1(tuned, test) > _macro_f1(untuned, test)


@pytest.mark.parametrize("grid", [[], [0.0], [-1.0]])
def test_a_bad_c_grid_is_a_config_error(grid):
    with pytest.raises(ValueError, match="tfidf_c_grid"):
        EvalConfig(tfidf_c_grid=grid)


def test_the_classical_benchmark_scores_every_variant_on_the_same_rows():
    from benchmarks.bench_classical import compare_domain, markdown

    counts = {"a": 60, "b": 30, "c": 12}
    train, val, test = (_texts(counts, seed, overlap=0.8) for seed in (7, 8, 9))
    row = compare_domain(train, val, test, ["a", "b", "c"])
    assert set(row) == {"untuned", "balanced", "balanced_c_val", "balanced_c_cv"}
    assert row["untuned"]["C"] == row["balanced"]["C"] == 1.0
    assert row["balanced_c_val"]["macro_f1"] == round(_macro_f1(fit_tfidf(train, val, EvalConfig()), test), 4)
    table = markdown({"domains": [{"dataset": "toy", "domain": "d", "labels": 3, **row}]})
    assert f"| toy | d | 3 | {row['untuned']['macro_f1']:.3f} |" in table
