"""What made an adapter: the code, the data and the config groups it was given, each reduced to a hash.

``adapter_key`` is the identity of one trained adapter. It names the adapter's directory, keys the
Prefect cache of training and evaluation, and is stored on the registered version so that re-running
with nothing changed registers nothing new. It is derived from exactly what training receives
(:class:`TrainingInputs`), never from a hand-kept list of config keys; the evaluation's key likewise
from :class:`EvaluationInputs`.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from lora_pipeline import __version__
from lora_pipeline.config import EvaluationInputs, PipelineConfig, TrainingInputs, sha256_json
from lora_pipeline.data.prepare import DomainSplits
from lora_pipeline.models import kind_of
from lora_pipeline.models.bases import check_lengths
from lora_pipeline.models.compute import compute_for

PACKAGE_DIR = Path(__file__).resolve().parent
# The code that builds an adapter (all subpackages' .py files), and what evaluation adds to it. Not the
# config module (the values it gives are hashed through the input groups), registry, serving or reporting:
# editing the API or a report must not retrain every domain.
# metrics: the epoch choice; classical: the TF-IDF + LR that decides whether a domain trains the bag-of-words term
ADAPTER_CODE = ("data", "models", "training", "evaluation/metrics.py", "evaluation/classical.py")
EVALUATION_CODE = ("data", "models", "training", "evaluation")


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
def code_fingerprint(packages: tuple[str, ...] = ADAPTER_CODE) -> str:
    """sha256 of the source of ``packages`` (subpackages of lora_pipeline, recursively, or single modules).

    Finer than the git commit (a README or API change does not retrain) and exact for uncommitted edits.
    """
    digest = hashlib.sha256()
    for package in packages:
        root = PACKAGE_DIR / package
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def training_inputs(cfg: PipelineConfig) -> TrainingInputs:
    """The config groups training reads; the prompt only for kinds that train on one. A length the base
    cannot take stops here, before any data is prepared."""
    check_lengths(cfg.base)
    kind = kind_of(cfg.base.name, cfg.task)
    generation = cfg.generation.prompting() if not kind.classifies else None  # not the evaluation-only keys
    return TrainingInputs(base=cfg.base, lora=cfg.lora, train=cfg.train,
                          instruction=cfg.generative.instruction if kind.prompted and kind.classifies else None,
                          compute=compute_for(cfg.runtime), task=cfg.task, generation=generation)


def evaluation_inputs(cfg: PipelineConfig) -> EvaluationInputs:
    """The config groups evaluation reads; the generative settings only for prompted kinds."""
    kind = kind_of(cfg.base.name, cfg.task)
    return EvaluationInputs(base=cfg.base, eval=cfg.eval,
                            generative=cfg.generative if kind.prompted and kind.classifies else None,
                            seed=cfg.split.seed, compute=compute_for(cfg.runtime), task=cfg.task,
                            generation=cfg.generation if not kind.classifies else None)


def adapter_key(splits: DomainSplits, training: TrainingInputs) -> str:
    """Identity of the adapter trained from this domain's rows with these inputs and this code."""
    return sha256_json({
        "domain": splits.domain,
        "domain_fingerprint": splits.fingerprint,
        "labels": splits.labels,
        "training": training.sha256(),
        "code": code_fingerprint(ADAPTER_CODE),
    })


def evaluation_key(splits: DomainSplits, training: TrainingInputs, evaluation: EvaluationInputs) -> str:
    """Identity of one evaluation: the adapter it evaluates, the evaluation inputs and code."""
    return sha256_json({"adapter": adapter_key(splits, training), "evaluation": evaluation.sha256(),
                        "code": code_fingerprint(EVALUATION_CODE)})
