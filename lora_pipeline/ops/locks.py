"""An exclusive lock across processes of one machine (or of machines sharing the project folder on a file
system with working ``flock``), so that read-decide-write sequences on the registry do not interleave."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_pipeline.config import domain_dirname


@contextmanager
def exclusive(folder: str | Path, name: str) -> Iterator[None]:
    """Hold the lock ``name`` (any string: mapped to a safe file name in ``folder``) for the block; another
    process (or thread) asking for the same name waits. Released when the block ends or the process dies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{domain_dirname(name)}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
