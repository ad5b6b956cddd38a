"""The registry's vocabulary, defined once: registered-model names, tag keys, aliases, and lookups of
"the current champion of X". Imported by tracking, register, catalog, champions, serving and reporting.

Light on purpose: MLflow's client only, so a server process that reads champions never imports the
training or evaluation code.
"""

from __future__ import annotations

from collections.abc import Iterator

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from lora_pipeline.config import BaseModelConfig, domain_dirname, safe_name

# Aliases
CHAMPION = "champion"
CHALLENGER = "challenger"

# Tags on a registered model (one per domain and base)
MANAGED_BY, MANAGED_BY_US = "managed_by", "lora-pipeline"  # marks the models this pipeline created
DATASET = "dataset"
DOMAIN = "domain"
BASE_MODEL = "base_model"
HISTORY_PREFIX = "champion_history/"  # + UTC time: one JSON event per change of `champion`

# Tags on a model version (and on its run): provenance and the promotion decision
DATA_FINGERPRINT = "data_fingerprint"
DOMAIN_FINGERPRINT = "domain_fingerprint"
CONFIG_SHA256 = "config_sha256"
CODE_VERSION = "code_version"
ADAPTER_KEY = "adapter_key"  # identity of the trained adapter: same key, same adapter (no new version)
ADAPTER_SHA256 = "adapter_sha256"  # sha256 of the adapter's checksums.json: serving refuses other bytes
REGISTRATION, PENDING, COMPLETE = "registration", "pending", "complete"  # complete: decided and aliased
SEED = "seed"
LABELS = "labels"
PRECISION = "precision"  # runtime.precision as resolved: "bf16" (autocast, fp32 weights) or "fp32"
DEVICE = "device"  # "cpu" or "cuda": where it was trained and evaluated
PROMOTION_METRIC = "promotion_metric"  # what the decision compared (promotion.metric, or the task's own)
PROMOTION_DECISION = "promotion_decision"
PROMOTION_REASON = "promotion_reason"
PREVIOUS_CHAMPION = "previous_champion"
VS_PREFIX = "vs_"  # + model ("base", "tfidf", ...): adapter minus that model on the test rows, with its interval
VS_CHAMPION = VS_PREFIX + CHAMPION  # the same against the champion of the time, rescored on these rows


def champion_rescored(metric: str) -> str:
    """Tag of the champion's value of ``metric`` on the new version's rows (champion_rescored_rougeL ...)."""
    return f"champion_rescored_{metric}"

# Tags on runs
DOMAIN_RUN_PREFIX = "domain_run/"  # + domain_dirname(domain), on a parent run -> the run holding that domain's evaluation
REGISTERED_MODEL = "registered_model"
REGISTERED_VERSION = "registered_version"
TRAINED_ON = "trained_on"
BAG_OF_WORDS_REASON = "bag_of_words"  # a domain run: whether its encoder trained the bag-of-words term, and why
RUN_BY = "run_by"  # host:pid of the process that opened the run: a later run marks it KILLED if that is gone
FAILED_DOMAINS = "failed_domains"

# The base whose models keep the plain <dataset>-<domain> name: the config's default base.
DEFAULT_BASE = BaseModelConfig().name
_PAGE = 100


def registered_name(dataset: str, domain: str, base_model: str) -> str:
    """'<dataset>-<domain>', plus '-<base>' for any base but the default: one champion per domain and base."""
    suffix = "" if base_model == DEFAULT_BASE else f"-{base_model}"
    # A domain MLflow cannot take as is ('a/b', '日本') gets a hash: 'a/b' and 'a b' stay two models.
    part = domain if safe_name(domain) == domain else domain_dirname(domain)
    return safe_name(f"{dataset}-{part}{suffix}")


def managed_models(client: MlflowClient) -> Iterator[RegisteredModel]:
    """Every registered model this pipeline created, by name, page after page (the API returns 100 at most)."""
    token = None
    while True:
        page = client.search_registered_models(order_by=["name ASC"], max_results=_PAGE, page_token=token)
        yield from (m for m in page if m.tags.get(MANAGED_BY) == MANAGED_BY_US)
        token = page.token
        if not token:
            return


def versions_of(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of ``name``, page after page."""
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name='{name}'", max_results=_PAGE * 10, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def is_complete(version: ModelVersion) -> bool:
    """Registered in full: decision written and alias set. Versions from before the registration tag count
    as complete once they carry a decision."""
    default = COMPLETE if PROMOTION_DECISION in version.tags else PENDING
    return version.tags.get(REGISTRATION, default) == COMPLETE


def aliases_by_version(model: RegisteredModel) -> dict[str, list[str]]:
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        by_version.setdefault(str(version), []).append(alias)
    return by_version


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding ``name@champion``, or None (no such model, or no champion yet)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def champions_by_domain(client: MlflowClient, dataset: str, base_model: str) -> dict[str, tuple[str, str]]:
    """domain -> (registered model, champion version), for one dataset's models on one base."""
    found = {}
    for model in managed_models(client):
        tags = model.tags
        if tags.get(DATASET) != dataset or tags.get(BASE_MODEL, DEFAULT_BASE) != base_model:
            continue
        if CHAMPION in model.aliases:
            found[tags[DOMAIN]] = (model.name, str(model.aliases[CHAMPION]))
    return found
