"""Typed exceptions. Every error a user can cause is an ``FgjaxError`` whose
message is one line naming the file, column, key or value and what was expected;
the CLI prints it as ``fgjax: error: <message>`` and exits non-zero."""


class FgjaxError(Exception):
    """Base class of every error fgjax raises on purpose."""


class ConfigError(FgjaxError):
    """A config file, key or override value is wrong."""


class SchemaError(FgjaxError):
    """An input file lacks a required column or has one of the wrong type."""


class DataError(FgjaxError):
    """Input data is unusable as a whole (missing file, no valid rows, ...)."""


class CheckpointError(FgjaxError):
    """A checkpoint is missing, incomplete, damaged or of an unsupported format version."""


class OutputError(FgjaxError):
    """An output folder cannot be written as asked (foreign files, another kind of run, a run in progress)."""


class FgjaxWarning(UserWarning):
    """Base class of the warnings fgjax gives on purpose (the CLI prints ``fgjax: warning: <message>``)."""


class CheckpointWarning(FgjaxWarning):
    """A checkpoint was damaged or unfinished and fgjax fell back (e.g. a resume from an earlier step)."""
