"""MLflow "models from code" entry: logged as the model's code, so loading a version unpickles nothing."""

import mlflow

from lora_pipeline.registry.mlflow_model import AdapterClassifier

mlflow.models.set_model(AdapterClassifier())
