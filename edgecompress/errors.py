"""Error types: every user-facing failure is one of these, printed by the CLI as one line."""

from __future__ import annotations


class EdgeCompressError(Exception):
    """Base class: the message is a complete one-line explanation (what and where)."""


class ConfigError(EdgeCompressError, ValueError):
    """An experiment or compression config is invalid (unknown key, wrong type, out of range)."""


class DataError(EdgeCompressError):
    """A dataset file is missing, truncated or does not match its format."""


class StorageError(EdgeCompressError):
    """A study storage (SQLite file, journal, database server) cannot be opened or read."""


class UnknownNameError(EdgeCompressError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingDivergedError(EdgeCompressError):
    """The loss became NaN or infinite during training."""


class ModelError(EdgeCompressError):
    """A model reference cannot be built, or builds something the search cannot use (the message names it)."""


class CompressionError(EdgeCompressError):
    """A compression operator cannot be applied to a model (the message names the layer)."""


class TrialTimeoutError(EdgeCompressError):
    """A trial's work ran past its wall-clock budget (finetune.max_seconds)."""
