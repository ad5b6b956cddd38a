"""Operating a project: the local Prefect and MLflow UI servers (`lora-pipeline ui` / `stop`)."""
