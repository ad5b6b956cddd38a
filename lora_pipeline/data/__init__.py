"""Stage 1, prepare: a user's table (CSV / Parquet / JSONL) or the built-in VADER set -> validated,
per-domain stratified train/val/test splits on disk, each with a fingerprint of its rows.

Owns every input check: a bad file, column, row or domain stops here with one line, before anything
is trained or registered. Knows nothing of models.
"""
