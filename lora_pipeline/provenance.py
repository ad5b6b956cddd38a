"""What made an adapter: the code, the data and the config, each reduced to a hash.

``adapter_key`` is the identity of one trained adapter. It names the adapter's directory, keys the
Prefect cache of training and evaluation, and is stored on the registered version so that re-running
with nothing changed registers nothing new.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from lora_pipeline import __version__
from lora_pipeline.config import PipelineConfig, sha256_json
from lora_pipeline.data import DomainSplits

PACKAGE_DIR = Path(__file__).resolve().parent
# Config sections that change the trained weights. Not here: data.domains (which domains to build),
# eval/promotion (applied after training), tracking/runtime/schedule/servers (where and when things run).
TRAINING_SECTIONS = ("base", "lora", "train")


@functools.cache
def code_version() -> str:
    """Package version + git commit of this code (+ '-dirty' for uncommitted changes); '+unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_DIR,
                               capture_output=True, text=True, check=True).stdout.strip()
        return f"{__version__}+{commit[:12]}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return f"{__version__}+unknown"


@functools.cache
def code_fingerprint() -> str:
    """sha256 of the library's source and default config: any edit to how adapters are built changes it.

    Finer than the git commit (a README change does not retrain) and exact for uncommitted edits.
    """
    digest = hashlib.sha256()
    for path in sorted([*PACKAGE_DIR.glob("*.py"), *PACKAGE_DIR.glob("*.yaml")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def adapter_key(cfg: PipelineConfig, splits: DomainSplits) -> str:
    """Identity of the adapter trained from this domain's rows with this config and code."""
    return sha256_json({
        "domain": splits.domain,
        "domain_fingerprint": splits.fingerprint,
        "labels": splits.labels,
        "config": cfg.sha256(*TRAINING_SECTIONS),
        "code": code_fingerprint(),
    })


def evaluation_key(cfg: PipelineConfig, splits: DomainSplits) -> str:
    """Identity of one evaluation: the adapter it evaluates plus the evaluation settings."""
    return sha256_json({"adapter": adapter_key(cfg, splits), "eval": cfg.sha256("eval")})
