"""What differs between the two tasks once an adapter is trained, in one place per task: how a domain is
evaluated, which metric promotion compares, how two models' outputs on the same rows are compared, and what the
classical baseline is called.

- classify: macro-F1 over the domain's labels; paired bootstrap of macro-F1; TF-IDF + logistic regression.
- generate: mean ROUGE-L F-measure; paired bootstrap of the mean per-row ROUGE-L; the input's lead sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lora_pipeline.evaluation.evaluate import evaluate_domain
from lora_pipeline.evaluation.generation import evaluate_generation, rouge_rows
from lora_pipeline.evaluation.metrics import classification_metrics
from lora_pipeline.evaluation.significance import (Difference, bootstrap_interval, bootstrap_mean_interval,
                                                   paired_bootstrap, paired_bootstrap_mean)


@dataclass(frozen=True)
class Task:
    name: str  # config key `task`
    metric: str  # DomainEvaluation.metrics[model][metric]; run metrics "<model>_<metric>"
    metric_name: str  # as people read it
    classical: str  # the classical baseline's model key
    classical_name: str
    truth_column: str  # predictions.jsonl: the reference column
    evaluate: Callable  # (splits, adapter_dir, EvaluationInputs, out_dir) -> DomainEvaluation
    score_rows: Callable[[Sequence[str], Sequence[str], Sequence[str]], float]  # (truth, pred, labels) -> metric
    compare: Callable[..., Difference]  # (truth, pred_a, pred_b, labels, samples, confidence, seed) -> A - B
    interval: Callable[..., tuple[float, float]]  # (truth, pred, labels, samples, confidence) -> bootstrap interval


def _macro_f1(truth, pred, labels) -> float:
    return classification_metrics(list(truth), list(pred), list(labels))["macro_f1"]


def _mean_rouge_l(truth, pred, labels) -> float:
    rows = rouge_rows(list(truth), list(pred))
    return sum(rows) / len(rows) if rows else 0.0


def _rouge_l_difference(truth, pred_a, pred_b, labels, samples=1000, confidence=0.95, seed=42) -> Difference:
    return paired_bootstrap_mean(rouge_rows(list(truth), list(pred_a)), rouge_rows(list(truth), list(pred_b)),
                                 samples, confidence, seed)


def _rouge_l_interval(truth, pred, labels, samples=1000, confidence=0.95) -> tuple[float, float]:
    return bootstrap_mean_interval(rouge_rows(list(truth), list(pred)), samples, confidence)


CLASSIFY = Task("classify", "macro_f1", "macro-F1", "tfidf", "TF-IDF", "label", evaluate_domain, _macro_f1,
                paired_bootstrap, bootstrap_interval)
GENERATE = Task("generate", "rougeL", "ROUGE-L", "lead", "lead sentence", "target", evaluate_generation,
                _mean_rouge_l, _rouge_l_difference, _rouge_l_interval)
TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFY, GENERATE)}


def task_named(name: str) -> Task:
    return TASKS[name]


def task_of_metric(metric: str) -> Task:
    """The task whose evaluation records ``metric`` (DomainEvaluation.metric)."""
    return next(task for task in TASKS.values() if task.metric == metric)
