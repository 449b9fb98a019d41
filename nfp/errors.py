"""Errors users see as one line (the CLI prints `error: <message>` and exits 2; --debug shows the traceback),
and the helpers that keep such a line short and free of credentials."""

import re


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


class StorageError(NfpError):
    """A location that cannot be used as configured (no credentials for gs://, …); the message names it."""


class TrainingError(NfpError):
    """Training cannot go on (loss became NaN/Inf, nothing to train on); the message says what is kept."""


# --------------------------------------------------------------------------- what goes into a message
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """`https://user:secret@host/…` → `https://***@host/…`: URLs never carry credentials into messages or logs."""
    return _CREDENTIALS.sub("***@", text)


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), credentials redacted, at most `limit` chars."""
    text = str(err).strip()
    return redact(text.splitlines()[0])[:limit] if text else type(err).__name__


def tf_error_line(err: BaseException, limit: int = 300) -> str:
    """The line that says what went wrong in a TensorFlow error: its own message, not the "Graph execution error:"
    banner str() starts with, nor the "[[node …]]" trailers; credentials redacted."""
    text = getattr(err, "message", None) or str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("[[")]
    return redact(lines[0])[:limit] if lines else type(err).__name__
