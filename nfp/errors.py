"""Errors users see as one line (the CLI prints `error: <message>` and exits 2; --debug shows the traceback)."""


class NfpError(Exception):
    """Base of every error that is the user's input (config, data, model, tracking), not a bug."""


class ConfigError(NfpError, ValueError):
    """Bad config file, key or value; the message names the key path, the value and what is allowed."""


class DataError(NfpError):
    """Bad or missing data: URL, file, shard, manifest; the message names it."""


class ModelError(NfpError):
    """A model that cannot be found, loaded or used with the given clips."""


class TrackingError(NfpError):
    """MLflow tracking cannot be used as configured (unreachable server, bad experiment or name)."""


class TrainingError(NfpError):
    """Training cannot go on (loss became NaN/Inf, nothing to train on); the message says what is kept."""
