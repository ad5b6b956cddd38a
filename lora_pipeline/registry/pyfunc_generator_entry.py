"""MLflow "models from code" entry of a generation adapter: logged as the model's code, nothing is unpickled."""

import mlflow

from lora_pipeline.registry.mlflow_model import AdapterGenerator

mlflow.models.set_model(AdapterGenerator())
