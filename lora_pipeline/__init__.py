"""lora_pipeline: one frozen base model, one LoRA adapter per domain (plain Python; no Prefect here)."""

__version__ = "0.1.0"
