"""Register a logged adapter as a version of its domain's model, and promote it by the rule.

``log_and_register`` composes the three steps: log the domain's run (``tracking``), register the
version with its provenance, promote it (``champion``) or keep it as ``challenger``. An adapter
already registered (same ``adapter_key``: same data, training inputs and code) is not registered again.

Crash-consistent: a version is registered ``pending`` and marked ``complete`` only after its decision and
alias are written. A process killed in between leaves a pending version that nothing uses; the next run of
the same adapter deletes it and registers again.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from lora_pipeline.config import PROMOTION_METRICS, Compute, PipelineConfig
from lora_pipeline.data.prepare import DomainSplits, PreparedData, text_key
from lora_pipeline.errors import RegistryError
from lora_pipeline.evaluation.significance import Difference
from lora_pipeline.evaluation.tasks import task_named
from lora_pipeline.models import kind_of
from lora_pipeline.models.adapters import AdapterMeta, load_adapter, verify_checksums
from lora_pipeline.ops.locks import exclusive
from lora_pipeline.provenance import adapter_key, code_version, evaluation_inputs, training_inputs
from lora_pipeline.registry import schema
from lora_pipeline.registry.artifacts import fetch_verified_adapter
from lora_pipeline.registry.champions import AUTO, set_champion
from lora_pipeline.registry.promotion import PromotionDecision, decide_promotion
from lora_pipeline.registry.tracking import SEEN_TEXTS_ARTIFACT, log_domain_run, setup_tracking

if TYPE_CHECKING:
    from lora_pipeline.evaluation.evaluate import DomainEvaluation
    from lora_pipeline.training.trainer import TrainedAdapter


@dataclass(frozen=True)
class RegisteredAdapter:
    domain: str
    model_name: str
    version: str
    run_id: str
    alias: str  # the alias this version holds now ("" for none)
    reason: str
    is_new: bool  # False: this exact adapter (same data, config and code) was already registered
    metric: str = "macro_f1"  # what its promotion compared (a cached version: what it was decided by then)


def register_version(name: str, model_uri: str, provenance: dict[str, str]) -> str:
    """A new version of ``name`` for ``model_uri``, tagged with its provenance; returns its number."""
    return str(mlflow.register_model(model_uri, name, tags=provenance).version)


@dataclass(frozen=True)
class RescoredChampion:
    rows: list[int]  # positions in the new test split that the champion never trained or validated on
    predictions: list[str]  # its answers for those rows (labels, or generated texts)
    kind: str  # its adapter's kind: a kind this base no longer has cannot be served


def unseen_rows(client: MlflowClient, champion: ModelVersion, texts: list[str]) -> list[int]:
    """Positions of ``texts`` the champion did not learn from: not in its train/val texts (hashes logged with
    it); for a champion logged before those hashes, only texts that were in its own test split."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            seen = json.loads(Path(client.download_artifacts(champion.run_id, SEEN_TEXTS_ARTIFACT, tmp)).read_text())
            excluded = set(seen["train"]) | set(seen["val"])
            return [i for i, t in enumerate(texts) if text_key(t) not in excluded]
        except (MlflowException, OSError):
            old = pd.read_json(client.download_artifacts(champion.run_id, "evaluation/predictions.jsonl", tmp),
                               lines=True, dtype=False)
            tested = {text_key(t) for t in old["text"].astype(str)}
            return [i for i, t in enumerate(texts) if text_key(t) in tested]


def rescore_champion(client: MlflowClient, cfg: PipelineConfig, name: str, champion: ModelVersion,
                     evaluation: DomainEvaluation, texts: list[str]) -> RescoredChampion:
    """The current champion's answers for the new test rows it never learned from, loaded as serving loads it:
    from the registry (a bad local copy fetched once more), its files checked against the registered digest,
    in the run's precision."""
    target = cfg.work_dir / "champions" / name / f"v{champion.version}"
    adapter_dir = fetch_verified_adapter(client, cfg.tracking_uri, name, champion.version, target)
    meta = AdapterMeta.load(adapter_dir)
    if list(meta.labels) != list(evaluation.labels):
        raise RegistryError(f"its labels ({', '.join(meta.labels)}) differ from this version's")
    rows = unseen_rows(client, champion, texts)
    if meta.kind != kind_of(cfg.base.name, cfg.task).name or len(rows) < cfg.promotion.min_rescored_rows:
        return RescoredChampion(rows, [], meta.kind)
    adapter = load_adapter(adapter_dir, cfg.base.cache_dir, Compute(device=evaluation.device,
                                                                    precision=evaluation.precision))
    batch_size = adapter.kind.prediction_batch_size(evaluation_inputs(cfg))
    return RescoredChampion(rows, adapter.predict([texts[i] for i in rows], batch_size=batch_size), meta.kind)


def promote_version(client: MlflowClient, cfg: PipelineConfig, name: str, version: str,
                    evaluation: DomainEvaluation) -> PromotionDecision:
    """Apply the rule against the current champion, rescored on this version's test rows that it never learned
    from; store the decision and its numbers on the version. One promotion of ``name`` at a time, across
    processes: the champion read here is still the champion when the decision is written."""
    promotion, task = cfg.promotion, task_named(cfg.task, cfg.promotion_metric)
    metric = task.metric

    def score(model: str) -> float:
        return evaluation.metrics[model][metric.key]

    test = pd.read_json(Path(evaluation.artifacts_dir) / "predictions.jsonl", lines=True, dtype=False)
    truth, ours = test[task.truth_column].astype(str).tolist(), test["adapter_pred"].astype(str).tolist()

    def interval(theirs: list[str], rows: list[int] | None = None) -> Difference:
        rows = list(range(len(truth))) if rows is None else rows
        return metric.compare([truth[i] for i in rows], [ours[i] for i in rows], theirs, evaluation.labels,
                            promotion.bootstrap_samples, promotion.confidence, cfg.split.seed)

    intervals = {model: interval(test[f"{model}_pred"].astype(str).tolist())
                 for model in evaluation.metrics if model != "adapter" and f"{model}_pred" in test}
    with exclusive(cfg.work_dir / "locks", f"promote-{name}"):
        champion = schema.champion_version(client, name)
        recorded = client.get_run(champion.run_id).data.metrics.get(f"adapter_{metric.key}") if champion else None
        champion_f1 = float(recorded) if recorded is not None else None  # None: a champion of another task
        vs_champion, rescored, note = None, {}, ""
        if champion is not None and promotion.rescore_champion:
            try:
                found = rescore_champion(client, cfg, name, champion, evaluation, test["text"].astype(str).tolist())
                if found.kind != kind_of(cfg.base.name, cfg.task).name:  # e.g. a base whose kind changed since (encoder -> sentence-encoder)
                    champion_f1 = None
                    note = (f"champion v{champion.version} is a {found.kind} adapter, which this version's server "
                            "cannot load: replaced by any version that earns it")
                elif not found.predictions:
                    note = (f"champion v{champion.version} not rescored: only {len(found.rows)} of the new test "
                            f"rows are texts it never trained on (promotion.min_rescored_rows: "
                            f"{promotion.min_rescored_rows})")
                else:
                    vs_champion = interval(found.predictions, found.rows)
                    rescored_score = metric.score_rows([truth[i] for i in found.rows], found.predictions,
                                                       evaluation.labels)
                    rescored = {schema.champion_rescored(metric.key): f"{rescored_score:.4f}",
                                schema.VS_CHAMPION: f"v{champion.version}: {vs_champion.reads()}"}
            except Exception as exc:  # noqa: BLE001 - fall back to the recorded figure, and say why
                note = f"champion v{champion.version} not rescored: {type(exc).__name__}: {exc}".splitlines()[0]
        decision = decide_promotion(
            adapter_f1=score("adapter"),
            base_f1=score("base"),
            margin=promotion.min_gain_over_base,
            champion_f1=champion_f1,
            champion_version=champion.version if champion else None,
            tfidf_f1=score(task.classical),
            tfidf_tolerance=promotion.max_loss_to_tfidf,
            domain=evaluation.domain,
            vs_champion=vs_champion,
            champion_tolerance=promotion.max_loss_to_champion,
            intervals=intervals,
            metric_name=metric.name,
            classical_name=task.classical_name,
        )
        reason = f"{decision.reason}; {note}" if note else decision.reason
        for key, value in {
            **{f"{model}_{metric.key}": f"{score(model):.4f}" for model in ("adapter", "base", task.classical)},
            **{f"{schema.VS_PREFIX}{model}": d.reads() for model, d in intervals.items()},
            **rescored,
            schema.PROMOTION_METRIC: metric.key,
            schema.PROMOTION_DECISION: decision.alias,
            schema.PROMOTION_REASON: reason[:5000],  # MLflow's tag value limit
        }.items():
            client.set_model_version_tag(name, version, key, value)
        if decision.alias == schema.CHAMPION:
            client.set_model_version_tag(name, version, schema.PREVIOUS_CHAMPION,
                                         str(champion.version) if champion else "none")
            set_champion(client, name, version, AUTO, reason[:1000])
        else:
            client.set_registered_model_alias(name, schema.CHALLENGER, version)
    return PromotionDecision(decision.alias, reason)


def log_and_register(cfg: PipelineConfig, parent_run_id: str, prepared: PreparedData, splits: DomainSplits,
                     trained: TrainedAdapter, evaluation: DomainEvaluation) -> RegisteredAdapter:
    """Log the domain's run, register its adapter and apply the promotion rule (or find it registered)."""
    setup_tracking(cfg)
    client = MlflowClient()
    name = schema.registered_name(cfg.dataset_name, splits.domain, cfg.base.name)
    identity = adapter_key(splits, training_inputs(cfg))
    same_adapter = [v for v in schema.versions_of(client, name) if v.tags.get(schema.ADAPTER_KEY) == identity]
    for version in same_adapter:  # a registration killed half-way: superseded by this one, never used
        if not schema.is_complete(version):
            client.delete_model_version(name, version.version)
    complete = [v for v in same_adapter if schema.is_complete(v)]
    existing = None if cfg.runtime.refresh_cache else max(complete, key=lambda v: int(v.version), default=None)
    if existing is not None:  # a cached re-run: the same adapter is not registered twice
        aliases = schema.aliases_by_version(client.get_registered_model(name)).get(str(existing.version), [])
        return RegisteredAdapter(domain=splits.domain, model_name=name, version=str(existing.version),
                                 run_id=existing.run_id, alias=",".join(aliases),
                                 reason=f"unchanged: the same adapter (data, training config and code) as v"
                                        f"{existing.version} (runtime.refresh_cache=true trains, evaluates, gates anew)",
                                 is_new=False,
                                 metric=existing.tags.get(schema.PROMOTION_METRIC) or PROMOTION_METRICS[cfg.task][0])
    provenance = {
        schema.DOMAIN: splits.domain,
        schema.BASE_MODEL: cfg.base.name,
        schema.DATA_FINGERPRINT: prepared.fingerprint,
        schema.DOMAIN_FINGERPRINT: splits.fingerprint,
        schema.CONFIG_SHA256: cfg.sha256(),
        schema.CODE_VERSION: code_version(),
        schema.ADAPTER_KEY: identity,
        schema.SEED: str(cfg.train.seed),
        schema.PRECISION: trained.precision,
        schema.DEVICE: trained.device,
        schema.LABELS: ",".join(splits.labels),
        schema.ADAPTER_SHA256: verify_checksums(trained.adapter_dir),  # and the files are still what was saved
        schema.REGISTRATION: schema.PENDING,
    }
    run_id, model_uri = log_domain_run(cfg, parent_run_id, splits, trained, evaluation, provenance)
    model_tags = {schema.DATASET: cfg.dataset_name, schema.DOMAIN: splits.domain, schema.BASE_MODEL: cfg.base.name,
                  schema.MANAGED_BY: schema.MANAGED_BY_US}
    version = register_version(name, model_uri, provenance)
    try:
        for tag, value in model_tags.items():
            client.set_registered_model_tag(name, tag, value)
        decision = promote_version(client, cfg, name, version, evaluation)
        client.set_model_version_tag(name, version, schema.REGISTRATION, schema.COMPLETE)  # the last write
    except Exception:
        # Nothing half-done stays registered: drop the version that did not get its decision and alias.
        client.delete_model_version(name, version)
        raise
    client.set_tag(run_id, schema.REGISTERED_MODEL, name)
    client.set_tag(run_id, schema.REGISTERED_VERSION, version)
    client.set_tag(run_id, schema.PROMOTION_METRIC, cfg.promotion_metric)
    client.set_tag(run_id, schema.PROMOTION_DECISION, decision.alias)
    client.set_tag(run_id, schema.PROMOTION_REASON, decision.reason)
    return RegisteredAdapter(domain=splits.domain, model_name=name, version=version, run_id=run_id,
                             alias=decision.alias, reason=decision.reason, is_new=True, metric=cfg.promotion_metric)
