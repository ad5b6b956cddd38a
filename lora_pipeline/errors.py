"""Errors a user acts on. Each message is one line naming the file/column/row/domain/key at fault."""

import errno


class PipelineError(Exception):
    """Base class: the CLI prints these as a single 'error: ...' line."""


class ConfigError(PipelineError, ValueError):
    """A config file or override that cannot be used."""


class DataError(PipelineError, ValueError):
    """Bad input data; raised before anything is trained or registered."""


class DomainTooSmall(DataError):
    """A domain without enough data to train (too few rows, or one class). When the run takes every domain of
    the file, such a domain is left out with a note and the others go on; a domain asked for by name stops it."""


class DomainFailure(PipelineError, RuntimeError):
    """At least one domain failed; the others were still registered. Names each domain and its error."""


class RegistryError(PipelineError, LookupError):
    """A registry command named a model, version or alias that cannot be used."""


class AdapterLoadError(PipelineError, ValueError):
    """A registered adapter the server cannot load (wrong base, too many labels, unmixable modules, I/O)."""


class NonFiniteOutputError(AdapterLoadError):
    """An adapter produced NaN/inf scores: broken weights. Refused, never returned as an answer."""


class UnknownDomainError(PipelineError, LookupError):
    """A prediction asked for a domain that has no loaded champion."""


class WrongTaskError(PipelineError, ValueError):
    """A domain asked for the other task: /predict of a domain whose adapter writes text, or /generate of a
    classifier."""


# errno values of I/O errors worth retrying (busy, interrupted, would block, remote/NFS hiccups).
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ECONNREFUSED, errno.ESTALE}
_TRANSIENT_WORDS = ("database is locked", "database table is locked", "busy", "temporarily unavailable",
                    "too many requests", "connection reset", "connection refused", "timed out")


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can fix (a busy MLflow store, flaky I/O); False for bugs and bad input.

    Looks through the exception chain: MLflow and SQLAlchemy wrap the sqlite/HTTP error that says 'busy'.
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, PipelineError):
            return False
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        if any(word in str(exc).lower() for word in _TRANSIENT_WORDS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
