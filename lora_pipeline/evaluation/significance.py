"""Is a macro-F1 (or mean ROUGE-L) difference more than noise? A paired bootstrap over the test rows.

Two models scored on the same rows are resampled together (the same rows drawn for both), so what
varies is only which rows are drawn: the interval of the difference says how much of it the test split
can vouch for. On 400 rows a run-to-run spread of 0.03-0.05 macro-F1 is common; a 0.002 gain is noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    """macro-F1 of model A minus model B on the same rows, with its bootstrap interval."""

    diff: float
    low: float
    high: float
    confidence: float
    n_rows: int
    samples: int

    def reads(self) -> str:
        return f"{self.diff:+.4f} [{self.low:+.4f}, {self.high:+.4f}] ({self.confidence:.0%} CI, {self.n_rows} rows)"

    def as_dict(self) -> dict:
        return asdict(self)


def _macro_f1_per_sample(truth: np.ndarray, pred: np.ndarray, n_labels: int) -> np.ndarray:
    """macro-F1 of each row of ``truth``/``pred`` (resamples x rows of label ids), as
    ``metrics.classification_metrics`` counts it: averaged over the labels with true rows in that resample."""
    f1, present = np.zeros(truth.shape[0]), np.zeros(truth.shape[0])
    for label in range(n_labels):
        is_true, is_pred = truth == label, pred == label
        tp = (is_true & is_pred).sum(axis=1)
        denominator = is_true.sum(axis=1) + is_pred.sum(axis=1)  # 2tp + fp + fn
        f1 += np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)
        present += is_true.sum(axis=1) > 0
    return f1 / np.maximum(present, 1)


def _resamples(n: int, samples: int, seed: int, cells: int = 2_000_000):
    """``samples`` draws of ``n`` row positions with replacement, a block of at most ``cells`` at a time (1000
    resamples of 50,000 rows at once would be 400 MB per array)."""
    if n == 0:
        raise ValueError("no rows to resample")
    rng, per_block = np.random.default_rng(seed), max(1, cells // n)
    for start in range(0, samples, per_block):
        yield rng.integers(0, n, size=(min(per_block, samples - start), n))


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` share of the resampled ``values`` (percentile bootstrap)."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return round(float(low), 6), round(float(high), 6)


def _label_ids(values: Sequence, labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(x, -1) for x in values])


def bootstrap_interval(truth: Sequence, pred: Sequence, labels: Sequence[str], samples: int = 1000,
                       confidence: float = 0.95, seed: int = 42) -> tuple[float, float]:
    """The percentile interval of one model's macro-F1 over resamples of the test rows (the report's error bars)."""
    y, p = _label_ids(truth, labels), _label_ids(pred, labels)
    f1 = np.concatenate([_macro_f1_per_sample(y[rows], p[rows], len(labels)) for rows in _resamples(len(y), samples, seed)])
    return _percentile_interval(f1, confidence)


def paired_bootstrap(truth: Sequence, pred_a: Sequence, pred_b: Sequence, labels: Sequence[str],
                     samples: int = 1000, confidence: float = 0.95, seed: int = 42) -> Difference:
    """macro-F1(A) - macro-F1(B) on these rows, and its percentile interval over ``samples`` resamples."""
    y, a, b = (_label_ids(values, labels) for values in (truth, pred_a, pred_b))
    n = len(y)
    diffs = np.concatenate([
        _macro_f1_per_sample(y[rows], a[rows], len(labels)) - _macro_f1_per_sample(y[rows], b[rows], len(labels))
        for rows in _resamples(n, samples, seed)])
    observed = float(_macro_f1_per_sample(y[None], a[None], len(labels))[0]
                     - _macro_f1_per_sample(y[None], b[None], len(labels))[0])
    low, high = _percentile_interval(diffs, confidence)
    return Difference(diff=round(observed, 6), low=low, high=high, confidence=confidence, n_rows=n, samples=samples)


def paired_bootstrap_mean(scores_a: Sequence[float], scores_b: Sequence[float], samples: int = 1000,
                          confidence: float = 0.95, seed: int = 42) -> Difference:
    """mean(A) - mean(B) of per-row scores on the same rows (ROUGE-L of two models' outputs), and its percentile
    interval over ``samples`` resamples of the rows."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    diffs = np.concatenate([(a[rows] - b[rows]).mean(axis=1) for rows in _resamples(len(a), samples, seed)])
    low, high = _percentile_interval(diffs, confidence)
    return Difference(diff=round(float((a - b).mean()), 6), low=low, high=high, confidence=confidence,
                      n_rows=len(a), samples=samples)


def bootstrap_mean_interval(scores: Sequence[float], samples: int = 1000, confidence: float = 0.95,
                            seed: int = 42) -> tuple[float, float]:
    """The percentile interval of a mean per-row score (the report's error bars for ROUGE)."""
    x = np.asarray(scores, dtype=float)
    means = np.concatenate([x[rows].mean(axis=1) for rows in _resamples(len(x), samples, seed)])
    return _percentile_interval(means, confidence)
