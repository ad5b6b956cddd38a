"""Errors a user acts on. Each message is one line naming the file/column/row/domain/key at fault."""


class PipelineError(Exception):
    """Base class: the CLI prints these as a single 'error: ...' line."""


class ConfigError(PipelineError, ValueError):
    """A config file or override that cannot be used."""


class DataError(PipelineError, ValueError):
    """Bad input data; raised before anything is trained or registered."""


class DomainFailure(PipelineError, RuntimeError):
    """At least one domain failed; the others were still registered. Names each domain and its error."""
