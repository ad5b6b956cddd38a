"""A console a person can read: the run's own lines (progress per domain, the results table, one
``error:`` line), with everything else in a log file.

Libraries talk a lot: transformers prints a LOAD REPORT for every new head and progress bars for every
load, the HF Trainer a bar and a dict per logging step, MLflow and peft warnings, and Prefect a
traceback for every failed task and flow. :func:`log_details_to` sends all of that to a file and keeps
on the console Prefect's one-line log records, without their tracebacks. Training processes do the same
into their adapter's ``train.log``.
"""

from __future__ import annotations

import logging
from pathlib import Path

# Log records the console never shows (the file still gets them). Prefect warns that a timeout cannot
# interrupt a worker thread, but the training task waits in half-second polls, so its timeout does work;
# and it reports a failed flow twice ("Encountered exception", then "Finished in state Failed(...)").
_CONSOLE_NOISE = ("but the task is running in a worker thread", "Encountered exception during execution")
# What only the log file should hear (the traceback behind a one-line `error:`).
DETAILS_LOGGER = "lora_pipeline.details"
# Libraries whose own handlers write to stderr, and captured warnings: their records go to the file only.
_LIBRARY_LOGGERS = ("transformers", "mlflow", "peft", "accelerate", "alembic", "urllib3", "py.warnings",
                    DETAILS_LOGGER)
_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s %(threadName)s] %(message)s"


_file_handler: logging.FileHandler | None = None  # the one this process writes to


class _WithoutTraceback(logging.Formatter):
    """A console formatter's output without the record's traceback (the file handler keeps it)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _not_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in _CONSOLE_NOISE)


def quiet_libraries() -> None:
    """No progress bars or load reports from transformers; Python warnings become log records."""
    import transformers

    transformers.utils.logging.set_verbosity_warning()  # sets up its logger now, so its handler can be replaced
    transformers.utils.logging.disable_progress_bar()
    logging.captureWarnings(True)


def log_details_to(path: str | Path, console: bool = True) -> Path:
    """Route library output and tracebacks into ``path`` (appended); the console keeps one line per record.

    ``console``: also strip tracebacks from this process's console handlers (the CLI); a training child
    only needs its library output moved to the file. Returns the log file's path."""
    global _file_handler
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    root = logging.getLogger()
    if _file_handler is not None:  # a second command in one process (tests, a served deployment): one file at a time
        for logger in [root, *map(logging.getLogger, _LIBRARY_LOGGERS)]:
            logger.removeHandler(_file_handler)
        _file_handler.close()
    _file_handler = logging.FileHandler(path, encoding="utf-8")
    _file_handler.setFormatter(logging.Formatter(_FORMAT))
    _file_handler.setLevel(logging.INFO)
    if console:
        for handler in root.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                if not isinstance(handler.formatter, _WithoutTraceback):
                    handler.setFormatter(_WithoutTraceback(handler.formatter))
                handler.addFilter(_not_noise)
    root.addHandler(_file_handler)
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.addHandler(_file_handler)
        library.propagate = False
        library.setLevel(logging.WARNING if name == "alembic" else logging.INFO)  # alembic: one line per migration
    return path
