"""The prediction service behind `lora-pipeline serve` and `lora-pipeline predict`.

The ``@champion`` version of every domain of the served datasets (``api.datasets``, or the configured
one) on the configured base is downloaded from the MLflow registry (adapter folders only, ~1 MB each) and loaded into one :class:`AdapterPool` over one base.
:meth:`ChampionService.reload` picks up new champions without a restart: the new version is loaded
next to the old one and swapped in only once it loaded, so a version that fails to load leaves the
previous one serving, and the failure is reported by :meth:`ChampionService.adapters`.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from mlflow import MlflowClient

from lora_pipeline.config import PipelineConfig
from lora_pipeline.errors import UnknownDomainError, WrongTaskError
from lora_pipeline.models import kind_named
from lora_pipeline.models.bases import get_spec
from lora_pipeline.models.compute import compute_for
from lora_pipeline.registry import schema
from lora_pipeline.registry.artifacts import download_adapter, fetch_verified_adapter
from lora_pipeline.serving.adapter_pool import AdapterPool, PoolRequest

# Run metrics shown next to each served adapter in GET /adapters.
SHOWN_METRICS = ("adapter_macro_f1", "adapter_accuracy", "base_macro_f1", "tfidf_macro_f1", "adapter_rougeL",
                 "adapter_rouge1", "adapter_rouge2", "base_rougeL", "lead_rougeL", "adapter_size_bytes", "train_seconds")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ServedAdapter:
    domain: str
    model_name: str
    version: str
    labels: list[str]
    metrics: dict[str, float]
    slot: str  # its name inside the pool
    loaded_at: str
    writes: bool = False  # a generation adapter (POST /generate), not a classifier (POST /predict)


@dataclass(frozen=True)
class Generated:
    domain: str
    output: str
    model_name: str
    model_version: str


@dataclass(frozen=True)
class LoadFailure:
    model_name: str
    version: str
    error: str
    at: str


@dataclass(frozen=True)
class Prediction:
    domain: str
    label: str
    probabilities: dict[str, float]
    model_name: str
    model_version: str


@dataclass
class ReloadReport:
    loaded: list[str] = field(default_factory=list)  # "vader-amazon v3"
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "vader-amazon v4: <error>"
    removed: list[str] = field(default_factory=list)  # domains whose champion alias was removed
    skipped: list[str] = field(default_factory=list)  # champions whose domain an earlier dataset serves


class ChampionService:
    def __init__(self, cfg: PipelineConfig, client: MlflowClient | None = None):
        self.cfg = cfg
        self.client = client or MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
        self.compute = compute_for(cfg.runtime)  # as the pipeline resolves it
        self.pool = AdapterPool(cfg.base.name, cfg.lora, cfg.api.max_labels, cfg.base.cache_dir, self.compute)
        # Replaced whole on every change (never mutated), so readers can take a consistent snapshot.
        self.served: dict[str, ServedAdapter] = {}
        self.failures: dict[str, LoadFailure] = {}
        self.last_reload_at: str | None = None
        self._reload_lock = threading.Lock()
        self._slots = itertools.count()
        self._download_root = cfg.work_dir / "serving"

    # -- registry -> pool -------------------------------------------------------------------------
    def champions(self) -> dict[str, tuple[str, str]]:
        """domain -> (registered model, champion version), over the served datasets."""
        return self._champions()[0]

    def _champions(self) -> tuple[dict[str, tuple[str, str]], list[str]]:
        """The champions, and one line per champion left out because its domain is taken by a dataset listed
        before its own (requests name a domain, so one domain has one adapter)."""
        found, shadowed = {}, []
        for dataset in self.cfg.served_datasets:
            for domain, (name, version) in schema.champions_by_domain(self.client, dataset, self.cfg.base.name).items():
                if domain in found:
                    shadowed.append(f"{name} v{version}: not loaded, domain '{domain}' is served by {found[domain][0]} "
                                    "(api.datasets lists its dataset first)")
                else:
                    found[domain] = (name, version)
        return found, shadowed

    def reload(self, domains: list[str] | None = None) -> ReloadReport:
        """Bring the pool in line with the registry's champions (only ``domains`` when given)."""
        report = ReloadReport()
        with self._reload_lock:
            champions, report.skipped = self._champions()
            wanted = set(domains) if domains else set(champions) | set(self.served)
            for domain in sorted(wanted):
                current = self.served.get(domain)
                if domain not in champions:
                    if current is not None:
                        self._swap(domain, None)
                        report.removed.append(domain)
                    continue
                name, version = champions[domain]
                if current is not None and (current.model_name, current.version) == (name, version):
                    report.unchanged.append(f"{name} v{version}")
                    continue
                try:
                    self._swap(domain, self._load(domain, name, version))
                except Exception as exc:  # keep serving the previous version; say why in /adapters
                    error = self.public_error(exc)  # shown by GET /adapters
                    self.failures = {**self.failures, domain: LoadFailure(name, version, error, _now())}
                    report.failed.append(f"{name} v{version}: {error}")
                    continue
                report.loaded.append(f"{name} v{version}")
            self.last_reload_at = _now()
        return report

    def public_error(self, exc: BaseException) -> str:
        """One line naming the error, without this machine's paths or the tracking store's address."""
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        host = urlparse(self.cfg.tracking_uri).hostname  # urllib3 names it apart: host='10.0.0.5', port=5000
        for private, shown in ((self.cfg.tracking_uri, "<registry>"), (str(self._download_root), "<serving>"),
                               (str(self.cfg.artifact_root), "<artifacts>"), (str(self.cfg.project_dir), "<project>"),
                               *([(host, "<registry-host>")] if host else [])):
            message = message.replace(private, shown)
        return message[:300]

    def _swap(self, domain: str, new: ServedAdapter | None) -> None:
        old = self.served.get(domain)
        served = {k: v for k, v in self.served.items() if k != domain}
        if new is not None:
            served[domain] = new
        # Under the pool lock, no prediction holds a snapshot that still routes rows to the old slot.
        with self.pool.lock:
            self.served = served
            if old is not None:
                self.pool.remove(old.slot)
        self.failures = {k: v for k, v in self.failures.items() if k != domain}

    def _load(self, domain: str, name: str, version: str) -> ServedAdapter:
        model_version = self.client.get_model_version(name, version)
        registered = model_version.tags.get(schema.ADAPTER_SHA256)  # absent on versions from before checksums
        adapter_dir = fetch_verified_adapter(self.client, self.cfg.tracking_uri, name, version,
                                             self._download_root / name / f"v{version}")
        slot = f"slot{next(self._slots)}"
        meta = self.pool.add(slot, adapter_dir, expected_digest=registered)
        metrics = self.client.get_run(model_version.run_id).data.metrics if model_version.run_id else {}
        return ServedAdapter(domain=domain, model_name=name, version=version, labels=list(meta.labels),
                             metrics={k: metrics[k] for k in SHOWN_METRICS if k in metrics}, slot=slot,
                             loaded_at=_now(), writes=not kind_named(meta.kind).classifies)

    def fetch_adapter(self, name: str, version: str) -> Path:
        """The version's adapter folder, downloaded once into work_dir/serving/<name>/v<version>."""
        return download_adapter(self.client, self.cfg.tracking_uri, name, version,
                                self._download_root / name / f"v{version}")

    # -- prediction -------------------------------------------------------------------------------
    def check_domains(self, domains: list[str]) -> None:
        unknown = sorted(set(domains) - set(self.served))
        if unknown:
            raise UnknownDomainError(f"unknown domain '{unknown[0]}' (served: {', '.join(sorted(self.served)) or 'none'})")

    def check_task(self, domains: list[str], writes: bool) -> None:
        """Every domain is served, and by an adapter of the asked task."""
        self.check_domains(domains)
        for domain in domains:
            if self.served[domain].writes != writes:
                route = "POST /generate" if self.served[domain].writes else "POST /predict"
                raise WrongTaskError(f"domain '{domain}' is served by a "
                                     f"{'generation' if self.served[domain].writes else 'classification'} "
                                     f"adapter: use {route}")

    def predict(self, items: list[tuple[str, str]]) -> list[Prediction]:
        """(domain, text) pairs -> predictions, in order; any mix of domains shares each forward pass."""
        with self.pool.lock:  # the snapshot's slots stay in the pool until this forward is done
            served = self.served
            self.check_task([domain for domain, _ in items], writes=False)
            requests = [PoolRequest(served[domain].slot, text) for domain, text in items]
            probs = self.pool.predict_proba(requests, batch_size=self.cfg.api.max_batch_size)
        out = []
        for (domain, _), p in zip(items, probs):
            adapter = served[domain]
            out.append(Prediction(domain=domain, label=adapter.labels[int(p.argmax())],
                                  probabilities={label: float(x) for label, x in zip(adapter.labels, p)},
                                  model_name=adapter.model_name, model_version=adapter.version))
        return out

    def predict_few_shot(self, text: str, examples: list[tuple[str, str]], labels: list[str] | None = None) -> dict:
        """Classify ``text`` with the bare base, prompted with labelled ``examples`` (no adapter, no training)."""
        labels = labels or sorted({label for _, label in examples})
        probs = self.pool.predict_few_shot(text, examples, labels, self.cfg.generative.instruction,
                                           self._few_shot_tokens())
        return {"label": labels[int(probs.argmax())],
                "probabilities": {label: float(p) for label, p in zip(labels, probs)}}

    def _few_shot_tokens(self) -> int:
        """Tokens of each text in a few-shot prompt: base.max_length, or for 'auto' the base's budget (a
        request has no train split to measure)."""
        base = self.cfg.base
        return base.max_length if isinstance(base.max_length, int) else base.max_length_cap or get_spec(base.name).length_budget

    def generate(self, items: list[tuple[str, str]], max_new_tokens: int | None = None) -> list[Generated]:
        """(domain, text) pairs -> each domain's adapter's output (greedy), in order; any mix of domains shares
        each ``generate``. ``max_new_tokens``: None = the largest default of the adapters asked."""
        with self.pool.lock:
            served = self.served
            self.check_task([domain for domain, _ in items], writes=True)
            outputs = self.pool.generate([PoolRequest(served[domain].slot, text) for domain, text in items],
                                         max_new_tokens, batch_size=self.cfg.generation.batch_size)
        return [Generated(domain, output, served[domain].model_name, served[domain].version)
                for (domain, _), output in zip(items, outputs)]

    def adapters(self) -> list[dict]:
        """Every domain served or failed: version, labels, metrics, and the last load error if any."""
        served, failures = self.served, self.failures
        rows = []
        for domain in sorted(set(served) | set(failures)):
            row: dict = {"domain": domain, "model": None, "version": None, "labels": [], "metrics": {},
                         "loaded_at": None, "error": None, "task": None}
            if domain in served:
                adapter = served[domain]
                row.update(model=adapter.model_name, version=adapter.version, labels=adapter.labels,
                           metrics=adapter.metrics, loaded_at=adapter.loaded_at,
                           task="generate" if adapter.writes else "classify")
            if domain in failures:
                failure = failures[domain]
                row.update(model=row["model"] or failure.model_name,
                           error={"version": failure.version, "message": failure.error, "at": failure.at})
            rows.append(row)
        return rows

    def report(self) -> dict:
        return {"base_model": self.cfg.base.name, "datasets": self.cfg.served_datasets,
                "last_reload_at": self.last_reload_at,
                "adapters": self.adapters()}

