"""Stage 5, serve: one base in memory with every domain's champion adapter, mixed-domain batches,
hot reload from the registry, and the FastAPI app. Imports ``models`` and ``registry.schema`` only:
a server process never loads the training or evaluation code.
"""
