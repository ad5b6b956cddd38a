"""Pure rules behind operations: the champion history replay, the transient-error test, the adapter key."""

import errno
import sqlite3

import pytest

from lora_pipeline.registry.champions import AUTO, PROMOTE, ROLLBACK, ChampionEvent, champion_stack
from lora_pipeline.config import load_config
from lora_pipeline.data.prepare import DomainSplits
from lora_pipeline.errors import DataError, is_transient
from lora_pipeline.provenance import adapter_key, evaluation_inputs, evaluation_key, training_inputs


def _events(*steps):
    return [ChampionEvent(at=f"t{i}", action=a, version=v, previous=None, reason="", by="test")
            for i, (a, v) in enumerate(steps)]


@pytest.mark.parametrize(
    "steps, expected",
    [
        ([], []),
        ([(AUTO, "1")], ["1"]),
        ([(AUTO, "1"), (AUTO, "3")], ["1", "3"]),
        ([(AUTO, "1"), (AUTO, "3"), (ROLLBACK, "1")], ["1"]),
        ([(AUTO, "1"), (PROMOTE, "2"), (PROMOTE, "3"), (ROLLBACK, "2"), (ROLLBACK, "1")], ["1"]),
        ([(AUTO, "1"), (PROMOTE, "1")], ["1"]),  # re-promoting the champion changes nothing
        ([(AUTO, "1"), (PROMOTE, "2"), (PROMOTE, "1")], ["1", "2", "1"]),  # a rollback would return to 2
    ],
)
def test_champion_stack_replays_history(steps, expected):
    assert champion_stack(_events(*steps)) == expected


def _chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:
        return exc


@pytest.mark.parametrize(
    "error, transient",
    [
        (sqlite3.OperationalError("database is locked"), True),
        (_chained(RuntimeError("API request failed"), sqlite3.OperationalError("database is locked")), True),
        (OSError(errno.EIO, "Input/output error"), True),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (OSError(errno.ENOTDIR, "Not a directory"), False),  # a path problem: retrying cannot help
        (FileNotFoundError(errno.ENOENT, "No such file"), False),
        (ValueError("shapes do not match"), False),
        (DataError("data.csv: missing text column 'text'"), False),
    ],
)
def test_only_transient_errors_are_retried(error, transient):
    assert is_transient(error) is transient


def _splits(fingerprint: str, domain: str = "amazon") -> DomainSplits:
    return DomainSplits(domain=domain, labels=["neg", "pos"], dir=f"/x/{domain}", fingerprint=fingerprint,
                        counts={"train": 1})


def _keys(cfg, fingerprint: str = "f1") -> tuple[str, str]:
    """(adapter key, evaluation key) of ``cfg`` on one domain's rows, as the flow derives them."""
    training, evaluation = training_inputs(cfg), evaluation_inputs(cfg)
    return adapter_key(_splits(fingerprint), training), evaluation_key(_splits(fingerprint), training, evaluation)


# (override, changes the adapter, changes the evaluation). An adapter change re-evaluates too.
@pytest.mark.parametrize(
    "base, override, new_adapter, new_evaluation",
    [
        ("all-minilm-l6-v2", "data.domains=[amazon]", False, False),  # which domains to build
        ("all-minilm-l6-v2", "runtime.parallel_domains=1", False, False),
        ("all-minilm-l6-v2", "promotion.min_gain_over_base=0.5", False, False),
        ("all-minilm-l6-v2", "api.port=9000", False, False),  # serving settings change nothing cached
        ("all-minilm-l6-v2", "generative.instruction=Pick one of {labels}.", False, False),  # an encoder has no prompt
        ("all-minilm-l6-v2", "eval.latency_samples=5", False, True),
        ("all-minilm-l6-v2", "train.seed=7", True, True),
        ("all-minilm-l6-v2", "lora.r=4", True, True),
        ("all-minilm-l6-v2", "base.max_length=32", True, True),
        ("smollm2-135m", "generative.instruction=Pick one of {labels}.", True, True),  # the prompt is trained
        ("smollm2-135m", "generative.few_shot_k=5", False, True),  # only the few-shot baseline changes
        ("smollm2-135m", "api.port=9000", False, False),
    ],
)
def test_cache_keys_change_with_exactly_what_each_stage_reads(base, override, new_adapter, new_evaluation):
    default = load_config(overrides=[f"base.name={base}"], env={})
    changed = load_config(overrides=[f"base.name={base}", override], env={})
    (a0, e0), (a1, e1) = _keys(default), _keys(changed)
    assert (a0 != a1) is new_adapter
    assert (e0 != e1) is new_evaluation
    assert _keys(default, "f2")[0] != a0  # other rows, another adapter


def test_code_fingerprint_covers_what_builds_adapters_not_the_api():
    from lora_pipeline import provenance

    adapter_dirs = {pkg for pkg in provenance.ADAPTER_CODE if (provenance.PACKAGE_DIR / pkg).is_dir()}
    assert {"data", "models", "training"} == adapter_dirs  # subpackages included, recursively
    # the epoch choice scores validation with the evaluation's metrics, and the bag-of-words choice fits the
    # classical TF-IDF + LR: those modules, not the rest of evaluation
    assert {pkg for pkg in provenance.ADAPTER_CODE if pkg not in adapter_dirs} == {"evaluation/metrics.py",
                                                                                   "evaluation/classical.py"}
    assert "serving" not in provenance.EVALUATION_CODE and "registry" not in provenance.EVALUATION_CODE


def test_editing_the_api_module_changes_no_cache_key(tmp_path, monkeypatch):
    """A copy of the library whose API module was edited fingerprints like the original; an edit to a
    model kind does not."""
    import shutil

    from lora_pipeline import provenance

    copy = tmp_path / "lora_pipeline"
    shutil.copytree(provenance.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))

    def fingerprint(packages):
        monkeypatch.setattr(provenance, "PACKAGE_DIR", copy)
        provenance.code_fingerprint.cache_clear()
        try:
            return provenance.code_fingerprint(packages)
        finally:
            provenance.code_fingerprint.cache_clear()

    before = {p: fingerprint(p) for p in (provenance.ADAPTER_CODE, provenance.EVALUATION_CODE)}
    with (copy / "serving" / "api.py").open("a") as f:
        f.write("\n# an edit to the API\n")
    assert {p: fingerprint(p) for p in before} == before
    with (copy / "models" / "encoder.py").open("a") as f:
        f.write("\n# an edit to how encoders are built\n")
    assert all(fingerprint(p) != before[p] for p in before)
    edited = {p: fingerprint(p) for p in before}
    with (copy / "evaluation" / "metrics.py").open("a") as f:  # how validation is scored: a new adapter
        f.write("\n# an edit to the metrics\n")
    assert all(fingerprint(p) != edited[p] for p in before)
