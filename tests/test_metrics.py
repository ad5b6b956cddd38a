import json

import pytest

from lora_pipeline.evaluation.metrics import classification_metrics, plot_confusion_matrix


def test_metrics_against_hand_computed_confusion_matrix(tmp_path):
    # true:  a a a a b b b c c c
    # pred:  a a b c b b a c c a
    y_true = list("aaaabbbccc")
    y_pred = list("aabcbbacca")
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [1, 0, 2]]
    # per class: a P=2/4 R=2/4 F=.5 ; b P=2/3 R=2/3 F=2/3 ; c P=2/3 R=2/3 F=2/3
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert m["recall"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert m["micro_f1"] == pytest.approx(0.6)
    assert m["per_class"]["a"]["f1-score"] == pytest.approx(0.5)
    json.dumps(m)  # logged as JSON: must serialise
    png = plot_confusion_matrix(m["confusion_matrix"], m["labels"], "t", tmp_path / "cm.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_label_absent_from_predictions_scores_zero_not_error():
    m = classification_metrics(["a", "b"], ["a", "a"], ["a", "b"])
    assert m["per_class"]["b"]["f1-score"] == 0.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


@pytest.mark.parametrize("y_true, y_pred, macro_f1", [
    (list("aabb"), list("aabb"), 1.0),             # 'c' has no test rows: not averaged in as a 0
    (list("aabb"), list("aabc"), (1 + 2 / 3) / 2),  # predicted once, wrongly: costs b its recall, no 0 for 'c'
    (list("aabc"), list("aabb"), (1 + 2 / 3 + 0) / 3),  # in the truth, never predicted: it counts, as 0
])
def test_macro_averages_are_over_the_labels_with_test_rows(y_true, y_pred, macro_f1):
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(macro_f1)
    assert m["per_class"]["macro avg"]["f1-score"] == pytest.approx(macro_f1)  # the report says the same
    assert m["micro_f1"] == pytest.approx(m["accuracy"])  # a stray 'c' is still a wrong prediction
    assert len(m["confusion_matrix"]) == 3 and sum(m["confusion_matrix"][2]) == y_true.count("c")  # every label
    assert "c" in m["per_class"]


def test_every_model_on_the_same_rows_is_averaged_over_the_same_labels():
    """A stray prediction of a label without test rows must not change which labels a model is averaged
    over (that would make a 99 %-accurate model score below a 97 % one and flip the TF-IDF gate)."""
    from lora_pipeline.evaluation.significance import paired_bootstrap

    truth = ["a"] * 50 + ["b"] * 50
    stray = ["a"] * 50 + ["b"] * 49 + ["c"]   # 99 % accurate, one 'c'
    worse = ["a"] * 50 + ["b"] * 47 + ["a"] * 3  # 97 % accurate, never 'c'
    f1 = {name: classification_metrics(truth, pred, ["a", "b", "c"])["macro_f1"] for name, pred in
          (("stray", stray), ("worse", worse))}
    assert f1["stray"] > f1["worse"]
    diff = paired_bootstrap(truth, stray, worse, ["a", "b", "c"], samples=200)
    assert diff.diff == pytest.approx(f1["stray"] - f1["worse"], abs=1e-6) and diff.diff > 0  # rounded to 6 places
