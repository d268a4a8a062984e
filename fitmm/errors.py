"""Typed errors. The CLI turns a `DataError` into a message and exit code 2."""


class DataError(ValueError):
    """Bad input data: the message names the file, the line or field, and what was expected."""


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, bad config, ...)."""


class ConfigError(ValueError):
    """A config value that is not allowed: the message names the key, the value and what is allowed."""
