"""The MLflow model of an adapter: its artifact is the adapter folder only; the base is named, not copied.

At load time the base comes from its own PyPI package (see ``lora_pipeline.models.bases``), so a registered version
is ~1-2 MB whatever the base's size.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from lora_pipeline.models.adapters import LoadedAdapter, load_adapter


# Logged as the model's code (MLflow "models from code"): loading a version runs this file, no pickle.
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")


class AdapterClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: DataFrame with a ``text`` column -> ``label`` + one ``p_<label>`` column per label."""

    def load_context(self, context) -> None:
        self.adapter: LoadedAdapter = load_adapter(context.artifacts["adapter"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        texts = model_input["text"].astype(str).tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        probs = self.adapter.predict_proba(texts)
        labels = self.adapter.meta.labels
        out = pd.DataFrame(probs, columns=[f"p_{label}" for label in labels])
        out.insert(0, "label", [labels[i] for i in probs.argmax(axis=1)])
        return out


def signature_for(labels: list[str]) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("string", "label")] + [ColSpec("double", f"p_{label}") for label in labels]),
    )
