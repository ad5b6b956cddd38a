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
