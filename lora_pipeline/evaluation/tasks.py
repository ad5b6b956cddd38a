"""What differs between the two tasks once an adapter is trained, in one place per task: how a domain is
evaluated, which metrics promotion may compare (``promotion.metric``; the first is the default), how two models'
outputs on the same rows are compared, and what the classical baseline is called.

- classify: macro-F1 (or accuracy) over the domain's labels that have rows in the scored split; TF-IDF +
  logistic regression.
- generate: mean ROUGE-L (or ROUGE-1 / ROUGE-2) F-measure; the input's lead sentence.

Every metric comes with its paired bootstrap (two models on the same rows) and its one-model interval:
macro-F1 is resampled as a whole, the others are means of per-row scores (accuracy: 1 or 0 a row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from lora_pipeline.evaluation.evaluate import evaluate_domain
from lora_pipeline.evaluation.generation import evaluate_generation, rouge_rows
from lora_pipeline.evaluation.metrics import classification_metrics
from lora_pipeline.evaluation.significance import (Difference, bootstrap_interval, bootstrap_mean_interval,
                                                   paired_bootstrap, paired_bootstrap_mean)


@dataclass(frozen=True)
class Metric:
    key: str  # DomainEvaluation.metrics[model][key]; run metrics "<model>_<key>"
    name: str  # as people read it
    score_rows: Callable[[Sequence[str], Sequence[str], Sequence[str]], float]  # (truth, pred, labels) -> metric
    compare: Callable[..., Difference]  # (truth, pred_a, pred_b, labels, samples, confidence, seed) -> A - B
    interval: Callable[..., tuple[float, float]]  # (truth, pred, labels, samples, confidence) -> bootstrap interval


def _mean_of(key: str, name: str, row_scores: Callable[[list[str], list[str]], list[float]]) -> Metric:
    """A metric that is the mean of a per-row score: its bootstraps resample the rows' scores."""
    def score_rows(truth, pred, labels) -> float:
        rows = row_scores(list(truth), list(pred))
        return sum(rows) / len(rows) if rows else 0.0

    def compare(truth, pred_a, pred_b, labels, samples=1000, confidence=0.95, seed=42) -> Difference:
        return paired_bootstrap_mean(row_scores(list(truth), list(pred_a)), row_scores(list(truth), list(pred_b)),
                                     samples, confidence, seed)

    def interval(truth, pred, labels, samples=1000, confidence=0.95) -> tuple[float, float]:
        return bootstrap_mean_interval(row_scores(list(truth), list(pred)), samples, confidence)

    return Metric(key, name, score_rows, compare, interval)


def _macro_f1(truth, pred, labels) -> float:
    return classification_metrics(list(truth), list(pred), list(labels))["macro_f1"]


def _correct(truth: list[str], pred: list[str]) -> list[float]:
    return [float(t == p) for t, p in zip(truth, pred)]


def _rouge(rouge_type: str) -> Callable[[list[str], list[str]], list[float]]:
    return lambda truth, pred: rouge_rows(truth, pred, rouge_type)


MACRO_F1 = Metric("macro_f1", "macro-F1", _macro_f1, paired_bootstrap, bootstrap_interval)


@dataclass(frozen=True)
class Task:
    name: str  # config key `task`
    metrics: tuple[Metric, ...]  # what promotion.metric may name; the first is the default
    classical: str  # the classical baseline's model key
    classical_name: str
    truth_column: str  # predictions.jsonl: the reference column
    evaluate: Callable  # (splits, adapter_dir, EvaluationInputs, out_dir) -> DomainEvaluation
    ranked_by: str = ""  # the metric promotion compares ("" = the first)

    @property
    def metric(self) -> Metric:
        return next((m for m in self.metrics if m.key == self.ranked_by), self.metrics[0])

    def with_metric(self, key: str | None) -> Task:
        """This task with promotion comparing ``key`` (None: the task's default)."""
        if key is not None and key not in {m.key for m in self.metrics}:
            raise ValueError(f"'{key}' is not a {self.name} metric ({', '.join(m.key for m in self.metrics)})")
        return replace(self, ranked_by=key or "")


CLASSIFY = Task("classify", (MACRO_F1, _mean_of("accuracy", "accuracy", _correct)), "tfidf", "TF-IDF", "label",
                evaluate_domain)
GENERATE = Task("generate", tuple(_mean_of(key, name, _rouge(key)) for key, name in
                                  (("rougeL", "ROUGE-L"), ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"))),
                "lead", "lead sentence", "target", evaluate_generation)
TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFY, GENERATE)}


def task_named(name: str, metric: str | None = None) -> Task:
    """Task ``name``, ranking by ``metric`` (None: its default)."""
    return TASKS[name].with_metric(metric)


def task_of_metric(metric: str) -> Task:
    """The task that can rank by ``metric`` (DomainEvaluation.metric), ranking by it."""
    return next(task for task in TASKS.values() if metric in {m.key for m in task.metrics}).with_metric(metric)
