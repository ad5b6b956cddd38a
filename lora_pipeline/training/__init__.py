"""Stage 2, train: one domain's LoRA adapter with the HF Trainer (setup -> train -> save), through the
base's model kind. Receives only the config groups training reads (:class:`TrainingInputs`), so the
adapter's identity is derived from exactly what made it (``lora_pipeline.provenance``).
"""
