"""Pre-flight checks: what would make a job's tracking fail, refused in one line before any work."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.uri import is_local_uri

from nfp import storage
from nfp.errors import TrackingError, first_line, redact
from nfp.tracking.runs import RUN_ID_FILE, fail_fast_http, get_run, read_run_id


def check_reachable(experiment_id: str | None = None) -> None:
    """Raise TrackingError (one line) if the tracking store, or a given experiment id, cannot be used."""
    uri = mlflow.get_tracking_uri()
    try:
        with fail_fast_http():
            client = mlflow.MlflowClient()
            client.search_experiments(max_results=1)
            experiment_id = experiment_id or os.environ.get("MLFLOW_EXPERIMENT_ID")
            if experiment_id:
                client.get_experiment(experiment_id)
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot track"
        # MLflow's own message repeats the URI, credentials included
        detail = first_line(err)
        what = (
            f"experiment id {experiment_id}" if experiment_id and "experiment" in detail.lower() else "tracking server"
        )
        raise TrackingError(f"MLflow {what} at {redact(uri)} is not usable: {detail}") from None


def check_artifact_location(experiment_name: str) -> None:
    """Raise TrackingError (one line) if the experiment's artifacts would go to a local dir that cannot be written.

    Remote locations (a server's proxied mlflow-artifacts:/, gs://, s3://) are the store's to check.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        location = get_run(run_id).info.artifact_uri
    else:
        experiment = mlflow.get_experiment_by_name(experiment_name)
        location = experiment.artifact_location if experiment else None
    # MLflow's own test: a server's proxied `mlflow-artifacts:/1` is no more local than gs://
    if not location or not is_local_uri(location, is_tracking_or_registry_uri=False):
        return
    path = Path(local_file_uri_to_path(location))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".nfp-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise TrackingError(
            f"MLflow artifact location {location} of experiment {experiment_name!r} is not writable: {err.strerror or err}"
        ) from None


def check_register_name(name: str | None) -> None:
    """Registered model names cannot be empty or contain '/' or ':' (MLflow's own rule), checked before training."""
    if name is not None and (not name.strip() or "/" in name or ":" in name):
        raise TrackingError(f"tracking.register_as: got {name!r}, expected a name without '/' or ':'")


def check_experiment_live(experiment, *, named_by: str) -> None:
    """TrackingError when `experiment` (an MLflow Experiment or None) is deleted: how to restore it, or what to name
    instead (`named_by`: the key or variable that chose it)."""
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {experiment.name!r} (id {experiment.experiment_id}, from {named_by}) is deleted in the "
            f"tracking store at {redact(mlflow.get_tracking_uri())}; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}`, or choose another in {named_by}"
        )


def check_can_log(cfg, *, state_dir) -> None:
    """TrackingError before any work when the run a training job would log into (MLFLOW_RUN_ID, or the one an earlier
    attempt saved in `state_dir`) or the experiment it would make one in is deleted in the tracking store."""
    saved, given = read_run_id(str(state_dir)), os.environ.get("MLFLOW_RUN_ID")
    if given or saved:
        saved_in = storage.join(str(state_dir), RUN_ID_FILE)
        run = get_run(
            given or saved,
            missing_ok=True,
            live=True,
            purpose=" (MLFLOW_RUN_ID)" if given else f" (saved in {saved_in} by an earlier attempt)",
            instead="" if given else f", or delete {saved_in} to log into a new run (training still resumes)",
        )
        if run is not None:
            check_experiment_live(mlflow.get_experiment(run.info.experiment_id), named_by="the run's experiment")
            return
    check_new_run_experiment(cfg)


def check_new_run_experiment(cfg) -> None:
    """TrackingError when the experiment a new run would go to (MLFLOW_EXPERIMENT_ID, else tracking.experiment) is
    deleted: MLflow would refuse the run only after the work."""
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if experiment_id:
        check_experiment_live(mlflow.get_experiment(experiment_id), named_by="MLFLOW_EXPERIMENT_ID")
    else:
        check_experiment_live(mlflow.get_experiment_by_name(cfg.tracking.experiment), named_by="tracking.experiment")
