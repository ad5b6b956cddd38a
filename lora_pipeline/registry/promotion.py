"""The promotion rule: champion only when earned, otherwise challenger. Pure, so it is tested alone."""

from __future__ import annotations

from dataclasses import dataclass

from lora_pipeline.registry.schema import CHALLENGER, CHAMPION

# Ties count as met: 0.42 - 0.40 is 0.0199999... in floating point, and metric values are exact ratios.
_TOL = 1e-9


@dataclass(frozen=True)
class PromotionDecision:
    alias: str  # CHAMPION or CHALLENGER
    reason: str  # the numbers compared, stored as a tag on the version


def decide_promotion(
    adapter_f1: float,
    base_f1: float,
    margin: float,
    champion_f1: float | None = None,
    champion_version: str | None = None,
) -> PromotionDecision:
    """Champion iff macro-F1 beats the zero-shot base by >= ``margin`` AND is not below the current champion."""
    gain = adapter_f1 - base_f1
    beats_base = gain >= margin - _TOL
    vs_base = f"macro-F1 {adapter_f1:.4f} vs zero-shot base {base_f1:.4f}: gain {gain:+.4f} {'>=' if beats_base else '<'} margin {margin:.4f}"
    if champion_f1 is None:
        keeps_level, vs_champion = True, "no current champion"
    else:
        keeps_level = adapter_f1 >= champion_f1 - _TOL
        vs_champion = (f"current champion v{champion_version} macro-F1 {champion_f1:.4f}: "
                       f"{'not below' if keeps_level else 'below'}")
    alias = CHAMPION if beats_base and keeps_level else CHALLENGER
    return PromotionDecision(alias=alias, reason=f"{alias}: {vs_base}; {vs_champion}")
