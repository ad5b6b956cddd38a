"""The promotion rule: champion only when earned, otherwise challenger. Pure, so it is tested alone.

Earned = beats the zero-shot base by the margin, does not lose to the classical TF-IDF + logistic
regression baseline (beyond a tolerance), and is not worse than the current champion. Against the
champion the comparison is on the same rows (the champion rescored on the new version's test split) and
must survive the noise: the lower end of the bootstrap interval of (new - champion) may be at most
``promotion.max_loss_to_champion`` below zero (non-inferiority). A new version that cannot show that is
held back, however its point estimate compares. A domain where the classical model wins is a finding the
user must see, so that reason is stated first and plainly.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_pipeline.evaluation.significance import Difference
from lora_pipeline.registry.schema import CHALLENGER, CHAMPION

# Ties count as met: 0.42 - 0.40 is 0.0199999... in floating point, and metric values are exact ratios.
_TOL = 1e-9


@dataclass(frozen=True)
class PromotionDecision:
    alias: str  # CHAMPION or CHALLENGER
    reason: str  # the numbers compared, stored as a tag on the version


def tfidf_wins(adapter_f1: float, tfidf_f1: float, tolerance: float = 0.0) -> bool:
    """True when TF-IDF+LR beats the adapter by more than ``tolerance`` macro-F1."""
    return adapter_f1 < tfidf_f1 - tolerance - _TOL


def tfidf_verdict(domain: str, adapter_f1: float, tfidf_f1: float, classical_name: str = "TF-IDF") -> str:
    return f"{classical_name} beats the adapter on {domain} ({tfidf_f1:.2f} vs {adapter_f1:.2f})"


def decide_promotion(
    adapter_f1: float,
    base_f1: float,
    margin: float,
    champion_f1: float | None = None,
    champion_version: str | None = None,
    tfidf_f1: float | None = None,
    tfidf_tolerance: float = 0.0,
    domain: str = "this domain",
    vs_champion: Difference | None = None,
    champion_tolerance: float = 0.0,
    intervals: dict[str, Difference] | None = None,
    metric_name: str = "macro-F1",
    classical_name: str = "TF-IDF",
) -> PromotionDecision:
    """Champion iff macro-F1 beats the zero-shot base by >= ``margin``, is not below TF-IDF+LR by more than
    ``tfidf_tolerance`` AND is not worse than the current champion: with ``vs_champion`` (new minus the
    champion rescored on the same rows) its interval's lower end is >= -``champion_tolerance``; without it
    (the champion could not be rescored) ``adapter_f1`` >= ``champion_f1`` on their own test splits.
    ``intervals``: model -> (adapter minus model) on the test rows, reported in the reason. The metric (and the
    classical baseline) are the task's: macro-F1 and TF-IDF+LR, or ROUGE-L and the lead sentence."""
    gain = adapter_f1 - base_f1
    beats_base = gain >= margin - _TOL
    reasons = [f"{metric_name} {adapter_f1:.4f} vs zero-shot base {base_f1:.4f}: gain {gain:+.4f} "
               f"{'>=' if beats_base else '<'} margin {margin:.4f}"]
    loses_to_tfidf = tfidf_f1 is not None and tfidf_wins(adapter_f1, tfidf_f1, tfidf_tolerance)
    classical = "TF-IDF+LR" if classical_name == "TF-IDF" else classical_name
    if loses_to_tfidf:
        reasons.insert(0, f"{tfidf_verdict(domain, adapter_f1, tfidf_f1, classical_name)}, tolerance "
                          f"{tfidf_tolerance:.4f}")
    elif tfidf_f1 is not None:
        reasons.append(f"{classical} {tfidf_f1:.4f}: not beaten by more than {tfidf_tolerance:.4f}")
    if vs_champion is not None:
        keeps_level = vs_champion.low >= -champion_tolerance - _TOL
        verdict = ("not worse" if keeps_level else
                   "statistically indistinguishable, held back" if vs_champion.high >= 0 else "worse")
        reasons.append(f"vs current champion v{champion_version} rescored on the same rows: {vs_champion.reads()}; "
                       f"lower end {'>=' if keeps_level else '<'} -{champion_tolerance:.4f}: {verdict}")
    elif champion_f1 is None:
        keeps_level = True
        reasons.append("no current champion")
    else:
        keeps_level = adapter_f1 >= champion_f1 - _TOL
        reasons.append(f"current champion v{champion_version} {metric_name} {champion_f1:.4f} on its own test split "
                       f"(not rescored): {'not below' if keeps_level else 'below'}")
    for model, interval in (intervals or {}).items():
        reasons.append(f"adapter - {model}: {interval.reads()}")
    alias = CHAMPION if beats_base and keeps_level and not loses_to_tfidf else CHALLENGER
    return PromotionDecision(alias=alias, reason=f"{alias}: {'; '.join(reasons)}")
