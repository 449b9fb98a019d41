"""Run lookup for every stage: an MLflow run by id (with one-line refusals), whether the server answers for it now,
the run id a job saved in its state dir, and files logged into an existing run."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow

from nfp import storage
from nfp.errors import TrackingError, first_line, redact

RUN_ID_FILE = "mlflow_run_id"


@contextlib.contextmanager
def fail_fast_http() -> Iterator[None]:
    """MLflow retries HTTP for ~4 minutes by default; a start-up check should answer in seconds."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def server_answers(run_id: str) -> bool:
    """Whether the tracking server answers for the run now (in seconds, not after MLflow's minutes of retries)."""
    try:
        with fail_fast_http():
            mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - any failure: it does not
        return False
    return True


def get_run(
    run_id: str,
    *,
    missing_ok: bool = False,
    error: type[Exception] = TrackingError,
    purpose: str = "",
    live: bool = False,
    instead: str = "",
):
    """The MLflow run `run_id`. A run the store does not have: None if `missing_ok`, else `error` (one line naming the
    run and what it was wanted `purpose`); a store that cannot be asked: `error` always. `live`: a deleted run is
    `error` too, saying how to restore it or, `instead`, what else to do."""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MlflowException for unknown ids, others for a bad store
        if missing_ok and getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise error(
            f"MLflow run {run_id}{purpose}: not found at {redact(mlflow.get_tracking_uri())} ({first_line(err)})"
        ) from None
    if live and run.info.lifecycle_stage == "deleted":
        raise error(
            f"MLflow run {run_id}{purpose}: deleted in the tracking store at {redact(mlflow.get_tracking_uri())}; "
            f"restore it with `mlflow runs restore --run-id {run_id}`{instead}"
        )
    return run


def log_files(run_id: str, paths, artifact_dir: str) -> None:
    """Log files (local or remote paths) into an existing run's `artifact_dir`."""
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            local = Path(tmp, Path(str(path)).name)
            storage.get(str(path), local)
            client.log_artifact(run_id, str(local), artifact_dir)


def read_run_id(state_dir: str) -> str | None:
    url = storage.join(state_dir, RUN_ID_FILE)
    return storage.read_bytes(url).decode().strip() or None if storage.exists(url) else None


def save_run_id(state_dir: str, run_id: str) -> None:
    storage.write_bytes(storage.join(state_dir, RUN_ID_FILE), run_id.encode())
