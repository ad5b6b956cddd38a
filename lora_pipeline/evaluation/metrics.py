"""Classification metrics (all from scikit-learn) and the confusion-matrix picture."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

# Scalar metrics logged to MLflow as <model>_<name>; precision and recall are macro averages.
SCALAR_METRICS = ("accuracy", "precision", "recall", "macro_f1", "micro_f1")


def classification_metrics(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> dict:
    """Scalar metrics + per-class report + confusion matrix (rows = true, columns = predicted).
    The macro averages are over the labels that have rows in ``y_true``: a label without test rows has no
    recall and no F1 to average, and counting it as 0 would cap every model's macro-F1 below 1. The set
    depends on the rows only, so every model scored on them is averaged over the same labels (a wrong
    prediction of an absent label still costs the true label its recall). The report and the matrix keep
    every label of ``labels``, and so does micro-F1 (which equals accuracy on single-label data)."""
    labels = list(labels)
    present = set(y_true)
    scored = {"labels": [label for label in labels if label in present] or labels, "zero_division": 0}
    kw = {"labels": labels, "zero_division": 0}
    *scores, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", **scored)  # once, for both
    precision, recall, macro_f1 = map(float, scores)
    report = classification_report(y_true, y_pred, output_dict=True, **kw)
    report["macro avg"] = {"precision": precision, "recall": recall, "f1-score": macro_f1, "support": len(y_true)}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": precision,
        "recall": recall,
        "macro_f1": macro_f1,
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", **kw)),  # every label: = accuracy
        "per_class": report,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": [str(label) for label in labels],
    }


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], title: str, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=labels).plot(ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
