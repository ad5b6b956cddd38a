import numpy as np
import pytest

from lora_pipeline.registry.promotion import CHALLENGER, CHAMPION, decide_promotion


@pytest.mark.parametrize(
    "adapter, base, margin, champion, expected",
    [
        (0.70, 0.40, 0.02, None, CHAMPION),       # first version, clearly beats base
        (0.41, 0.40, 0.02, None, CHALLENGER),     # beats base, but not by the margin
        (0.42, 0.40, 0.02, None, CHAMPION),       # exactly the margin counts
        (0.70, 0.40, 0.02, 0.69, CHAMPION),       # beats base and the champion
        (0.70, 0.40, 0.02, 0.70, CHAMPION),       # ties the champion: "not below"
        (0.68, 0.40, 0.02, 0.70, CHALLENGER),     # below the current champion
        (0.30, 0.40, 0.00, None, CHALLENGER),     # worse than zero-shot
    ],
)
def test_promotion_rule(adapter, base, margin, champion, expected):
    decision = decide_promotion(adapter, base, margin, champion, "3" if champion is not None else None)
    assert decision.alias == expected
    assert f"{adapter:.4f}" in decision.reason and f"{base:.4f}" in decision.reason
    if champion is not None:
        assert "v3" in decision.reason


# --- significance: a paired bootstrap over the test rows ------------------------------------------
def _rows(wrong_a: range, wrong_b: range, n: int = 400) -> tuple[list[str], list[str], list[str]]:
    """Two labels, ``n`` rows; model A wrong on the rows ``wrong_a``, B on ``wrong_b``."""
    truth = ["pos" if i % 2 else "neg" for i in range(n)]
    flip = {"pos": "neg", "neg": "pos"}
    a = [flip[t] if i in wrong_a else t for i, t in enumerate(truth)]
    b = [flip[t] if i in wrong_b else t for i, t in enumerate(truth)]
    return truth, a, b


@pytest.mark.parametrize("wrong_a, wrong_b, verdict", [
    (range(0, 100), range(0, 100), "tie"),  # the same predictions: exactly 0, interval [0, 0]
    (range(0, 100), range(60, 161), "noise"),  # one row apart, 81 disagreements each way: spans 0
    (range(0, 40), range(0, 100), "better"),  # 60 rows better: the interval is above 0
    (range(0, 160), range(0, 100), "worse"),
])
def test_paired_bootstrap_interval(wrong_a, wrong_b, verdict):
    from sklearn.metrics import f1_score

    from lora_pipeline.evaluation.significance import paired_bootstrap

    truth, a, b = _rows(wrong_a, wrong_b)
    d = paired_bootstrap(truth, a, b, ["neg", "pos"], samples=500)
    expected = (f1_score(truth, a, average="macro") - f1_score(truth, b, average="macro"))
    assert d.diff == pytest.approx(expected, abs=1e-6)  # the point estimate is scikit-learn's
    assert d.low <= d.diff <= d.high and d.n_rows == 400
    assert {"tie": d.low == d.high == 0, "noise": d.low < 0 < d.high, "better": d.low > 0,
            "worse": d.high < 0}[verdict]


def test_a_label_a_resample_misses_scores_like_scikit_learn():
    from sklearn.metrics import f1_score

    from lora_pipeline.evaluation.metrics import classification_metrics
    from lora_pipeline.evaluation.significance import _macro_f1_per_sample

    truth, pred = np.array([[0, 0, 1, 1, 1]]), np.array([[0, 1, 1, 1, 0]])  # label 2 never true nor predicted
    ours = _macro_f1_per_sample(truth, pred, 3)[0]
    # as the test metric: averaged over the labels with true rows (label 2 has none)
    assert ours == pytest.approx(f1_score(truth[0], pred[0], labels=[0, 1], average="macro", zero_division=0))
    assert ours == pytest.approx(classification_metrics(truth[0].tolist(), pred[0].tolist(), [0, 1, 2])["macro_f1"])


def _difference(low: float, high: float) -> "Difference":
    from lora_pipeline.evaluation.significance import Difference

    return Difference(diff=(low + high) / 2, low=low, high=high, confidence=0.95, n_rows=400, samples=1000)


@pytest.mark.parametrize("low, high, tolerance, expected, says", [
    (0.010, 0.060, 0.01, CHAMPION, "not worse"),  # clearly better than the champion on the same rows
    (-0.008, 0.030, 0.01, CHAMPION, "not worse"),  # within the non-inferiority margin
    (-0.028, 0.032, 0.01, CHALLENGER, "statistically indistinguishable, held back"),  # +0.002: noise
    (-0.080, -0.020, 0.01, CHALLENGER, "worse"),
    (-0.028, 0.032, 0.05, CHAMPION, "not worse"),  # a looser margin lets it through
])
def test_the_champion_comparison_is_on_the_same_rows_and_must_survive_the_noise(low, high, tolerance, expected, says):
    decision = decide_promotion(0.70, 0.40, 0.02, champion_f1=0.90, champion_version="3",  # recorded F1 ignored
                                vs_champion=_difference(low, high), champion_tolerance=tolerance)
    assert decision.alias == expected
    assert "v3 rescored on the same rows" in decision.reason and says in decision.reason


@pytest.mark.parametrize("task_name, key, truth, pred, expected", [
    ("classify", "macro_f1", ["a", "a", "b", "b"], ["a", "b", "b", "b"], (1 / (1 + 0.5 * 1) + 0.8) / 2),
    ("classify", "accuracy", ["a", "a", "b", "b"], ["a", "b", "b", "b"], 0.75),
    ("generate", "rouge1", ["the cat sat", "a dog"], ["the cat", "a dog"], (0.8 + 1.0) / 2),
    ("generate", "rouge2", ["the cat sat", "a dog"], ["the cat", "a dog"], (2 / 3 + 1.0) / 2),
])
def test_each_promotion_metric_scores_compares_and_bounds_itself(task_name, key, truth, pred, expected):
    """promotion.metric picks what the rule compares: its score, its paired bootstrap against another model
    on the same rows (itself: exactly 0) and its one-model interval (around the score)."""
    from lora_pipeline.evaluation.tasks import task_named

    metric = task_named(task_name, key).metric
    labels = ["a", "b"]
    assert metric.key == key
    assert metric.score_rows(truth, pred, labels) == pytest.approx(expected)
    same = metric.compare(truth, pred, pred, labels, samples=200)
    assert (same.diff, same.low, same.high) == (0, 0, 0)
    low, high = metric.interval(truth, pred, labels, samples=200)
    assert low <= expected + 1e-9 and expected - 1e-9 <= high


def test_a_metric_of_the_other_task_is_refused():
    from lora_pipeline.evaluation.tasks import task_named

    with pytest.raises(ValueError, match="'rougeL' is not a classify metric"):
        task_named("classify", "rougeL")
