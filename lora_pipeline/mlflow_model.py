"""Kept for versions registered before the package layout: their logged ``pyfunc_entry.py`` imports
``lora_pipeline.mlflow_model``. New versions import ``lora_pipeline.registry.mlflow_model``."""

from lora_pipeline.registry.mlflow_model import AdapterClassifier, signature_for  # noqa: F401
