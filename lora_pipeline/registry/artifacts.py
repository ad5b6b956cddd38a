"""A registered version's adapter folder on local disk: downloaded once, all or nothing.

Used by the server (its champions), by promotion (the champion it rescores on the new test split) and by
``models compare --on FILE``. Only MLflow's artifact API: light enough for a server process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.models import Model

from lora_pipeline.errors import AdapterLoadError
from lora_pipeline.models.adapters import verify_checksums
from lora_pipeline.registry import schema


def download_adapter(client: MlflowClient, tracking_uri: str, name: str, version: str, target: Path) -> Path:
    """Version ``version`` of ``name`` as a local adapter folder under ``target`` (downloaded once; a half
    download is never reused). Returns the adapter folder inside it."""
    target = Path(target)
    if not (target / "MLmodel").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=target.parent))
        try:
            uri = client.get_model_version_download_uri(name, version)
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging),
                                                        tracking_uri=tracking_uri)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(local, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    artifacts = Model.load(str(target)).flavors.get("python_function", {}).get("artifacts", {})
    if "adapter" not in artifacts:
        raise AdapterLoadError(f"{name} v{version}: the model has no 'adapter' artifact (not logged by lora-pipeline?)")
    return target / artifacts["adapter"]["path"]


def fetch_verified_adapter(client: MlflowClient, tracking_uri: str, name: str, version: str, target: Path) -> Path:
    """:func:`download_adapter`, its files checked against the digest registered on the version; a local copy
    that went bad is fetched once more (the registry's copy decides). Returns the adapter folder."""
    registered = client.get_model_version(name, version).tags.get(schema.ADAPTER_SHA256)  # absent: pre-checksum
    adapter_dir = download_adapter(client, tracking_uri, name, version, target)
    try:
        verify_checksums(adapter_dir, registered)
    except AdapterLoadError:
        shutil.rmtree(target, ignore_errors=True)
        adapter_dir = download_adapter(client, tracking_uri, name, version, target)
        verify_checksums(adapter_dir, registered)
    return adapter_dir
