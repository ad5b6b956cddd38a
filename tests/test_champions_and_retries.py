"""Pure rules behind operations: the champion history replay, the transient-error test, the adapter key."""

import errno
import sqlite3

import pytest

from lora_pipeline.champions import AUTO, PROMOTE, ROLLBACK, ChampionEvent, champion_stack
from lora_pipeline.config import load_config
from lora_pipeline.data import DomainSplits
from lora_pipeline.errors import DataError, is_transient
from lora_pipeline.provenance import adapter_key, evaluation_key


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


@pytest.mark.parametrize(
    "override, same_adapter",
    [
        ("data.domains=[amazon]", True),          # which domains to build does not change an adapter
        ("runtime.parallel_domains=1", True),
        ("promotion.min_gain_over_base=0.5", True),
        ("eval.latency_samples=5", True),
        ("train.seed=7", False),
        ("lora.r=4", False),
        ("base.max_length=32", False),
    ],
)
def test_adapter_key_changes_only_with_what_changes_the_weights(override, same_adapter):
    default, changed = load_config(env={}), load_config(overrides=[override], env={})
    assert (adapter_key(default, _splits("f1")) == adapter_key(changed, _splits("f1"))) is same_adapter
    assert adapter_key(default, _splits("f1")) != adapter_key(default, _splits("f2"))  # other rows
    if override.startswith("eval."):
        assert evaluation_key(default, _splits("f1")) != evaluation_key(changed, _splits("f1"))
