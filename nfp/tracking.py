"""MLflow glue: one run per training job, logged from the chief only, resumable, never fatal mid-training.

- The run is the one `mlflow run` created (MLFLOW_RUN_ID), else the one saved in the job's state
  dir by an earlier attempt (resume after preemption), else a new one; its id is saved there.
- Metric steps are epochs counted from 1; a step already in the run is not logged again, so a
  resumed job never duplicates an epoch.
- Once the tracking server fails mid-training, logging goes offline: training goes on, a warning
  is printed, and what was not logged is appended to `<state_dir>/tracking_backlog.jsonl`,
  replayed into the run when the job is resumed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nfp.errors import TrackingError, first_line, redact

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
BACKLOG_FILE = "tracking_backlog.jsonl"


@contextlib.contextmanager
def _fail_fast_http() -> Iterator[None]:
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


def check_reachable(experiment_id: str | None = None) -> None:
    """Raise TrackingError (one line) if the tracking store, or a given experiment id, cannot be used."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    try:
        with _fail_fast_http():
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
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        location = get_run(run_id).info.artifact_uri
    else:
        experiment = mlflow.get_experiment_by_name(experiment_name)
        location = experiment.artifact_location if experiment else None
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

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


def log_files(run_id: str, paths, artifact_dir: str) -> None:
    """Log files (local or remote paths) into an existing run's `artifact_dir`."""
    import tempfile

    import mlflow

    from nfp import storage

    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            local = Path(tmp, Path(str(path)).name)
            storage.get(str(path), local)
            client.log_artifact(run_id, str(local), artifact_dir)


def check_register_name(name: str | None) -> None:
    """Registered model names cannot be empty or contain '/' or ':' (MLflow's own rule), checked before training."""
    if name is not None and (not name.strip() or "/" in name or ":" in name):
        raise TrackingError(f"tracking.register_as: got {name!r}, expected a name without '/' or ':'")


class RunLogger:
    """Logs into one MLflow run; every call is a no-op when inactive (non-chief, tracking off)."""

    def __init__(
        self, run_id: str | None = None, state_dir: str | Path | None = None, logged_steps=(), experiment_id: str = ""
    ):
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.active = run_id is not None
        self._backlog = _backlog_path(state_dir, run_id) if state_dir and self.active else None
        self._logged_steps = set(logged_steps)
        self._offline = False

    @property
    def ui_url(self) -> str | None:
        """The run's page on the tracking server's UI, opened in its model-training views (MLflow 3 opens the GenAI
        ones unless asked); None off a server."""
        import mlflow

        uri = mlflow.get_tracking_uri()
        if not (self.active and uri.startswith(("http://", "https://"))):
            return None
        page = f"#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"
        return f"{redact(uri).rstrip('/')}/{page}"

    # -- resilience: a failing server costs a warning, not the training run
    def _call(self, what: str, fn, *args, record: dict | None = None, **kwargs) -> Any:
        if not self.active:
            return None
        if not self._offline:
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - tracking must not kill training
                self._offline = True
                warnings.warn(
                    f"MLflow logging failed ({what}: {first_line(err, 160)}); "
                    f"training continues, unlogged records go to {self._backlog}",
                    stacklevel=3,
                )
        if record is not None and self._backlog is not None:
            self._backlog.parent.mkdir(parents=True, exist_ok=True)
            with self._backlog.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return None

    def log_params(self, params: dict) -> None:
        """Params are immutable in MLflow: on resume, ones already logged are skipped, changed ones warned about."""
        import mlflow

        clean = {k: _param_value(v) for k, v in params.items()}
        existing = self._call("params", lambda: get_run(self.run_id).data.params) or {}
        changed = sorted(k for k in clean if k in existing and existing[k] != clean[k])
        if changed:
            warnings.warn(
                f"resumed run {self.run_id} keeps its original params; changed now: {', '.join(changed)}", stacklevel=2
            )
        new = {k: v for k, v in clean.items() if k not in existing}
        if new:
            self._call("params", mlflow.log_params, new, record={"params": new})

    def set_tags(self, tags: dict) -> None:
        import mlflow

        clean = {k: redact(str(v)) for k, v in tags.items()}
        self._call("tags", mlflow.set_tags, clean, record={"tags": clean})

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Scalars at `step` (epoch, from 1); a step already logged in this run is skipped."""
        import mlflow

        if step in self._logged_steps:
            return
        clean = {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
        self._call("metrics", mlflow.log_metrics, clean, step=step, record={"metrics": clean, "step": step})
        self._logged_steps.add(step)

    def log_artifact(self, local_path, artifact_path: str | None = None) -> None:
        import mlflow

        local_path = str(local_path)
        log_fn = mlflow.log_artifacts if Path(local_path).is_dir() else mlflow.log_artifact
        self._call(
            "artifact", log_fn, local_path, artifact_path, record={"artifact": local_path, "path": artifact_path}
        )

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """A stepped image series (mlflow.log_image with key/step) — the UI shows it with a step slider."""
        import mlflow

        self._call("image", mlflow.log_image, np.asarray(image, np.uint8), key=key, step=step)

    def log_figure(self, fig, artifact_file: str) -> None:
        import mlflow

        self._call("figure", mlflow.log_figure, fig, artifact_file)

    def log_model(self, model, input_example: np.ndarray, register_as: str | None = None) -> None:
        """Log the Keras model with a signature and input example (loadable with mlflow.pyfunc.load_model)."""
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        # batch and time stay open (-1): the model predicts clips of any length
        spec = TensorSpec(np.dtype(np.float32), (-1, -1, *input_example.shape[2:]))
        signature = ModelSignature(inputs=Schema([spec]), outputs=Schema([spec]))

        def _log():
            import keras
            import tensorflow as tf

            # Said, not inferred: MLflow infers them by loading the model in a subprocess that does not import
            # nfp.layers, fails, warns and falls back to keras alone (no TensorFlow).
            requirements = [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"]
            with _keras_input_example_fix(), _no_progress_bars():  # MLflow predicts the example to validate it
                return mlflow.keras.log_model(
                    model,
                    name="model",
                    signature=signature,
                    input_example=input_example,
                    registered_model_name=register_as,
                    pip_requirements=requirements,
                )

        self._call("model", _log)

    def keras_callback(self):
        """A Keras callback logging each epoch's scalar logs (loss, val_loss, learning_rate, …) at step epoch+1."""
        import keras

        logger = self

        class EpochMetricsToMlflow(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logger.log_metrics(dict(logs or {}), step=epoch + 1)

        return EpochMetricsToMlflow()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Keras progress bars off (they would put escape codes in a redirected log), restored after."""
    import keras

    was_on = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was_on:
            keras.config.enable_interactive_logging()


@contextlib.contextmanager
def _keras_input_example_fix() -> Iterator[None]:
    """mlflow.keras writes input_example.json before it creates the model dir (mlflow#16183, open in
    mlflow 3.17): create the dir first. Harmless once fixed upstream."""
    import mlflow.keras.save as keras_save

    original = keras_save._save_example

    def save_example(mlflow_model, input_example, path, *args, **kwargs):
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path, *args, **kwargs)

    keras_save._save_example = save_example
    try:
        yield
    finally:
        keras_save._save_example = original


def _is_scalar(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return redact(text)[:6000]


@contextlib.contextmanager
def start_run(cfg, *, is_chief: bool, state_dir) -> Iterator[RunLogger]:
    """One MLflow run for this job: resumed (MLFLOW_RUN_ID, or the id saved in state_dir) or new.

    Ends FINISHED on success; FAILED with the error as the `error` tag on an exception. A
    KeyboardInterrupt/SystemExit (SIGTERM on preemption) ends it KILLED so a restart resumes it.
    """
    if not (is_chief and cfg.tracking.enabled):
        yield RunLogger()
        return
    import mlflow

    # MLflow's default HTTP retries wait ~4 minutes per call; mid-training a dead server should cost
    # seconds before logging goes offline (an explicit setting of the user's wins).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    state_dir = str(state_dir)
    saved_run_id = _saved_run_id(state_dir)
    if saved_run_id and get_run(saved_run_id, missing_ok=True) is None:
        warnings.warn(
            f"run {saved_run_id} saved in {state_dir} is not in the tracking store at "
            f"{redact(mlflow.get_tracking_uri())}: starting a new run",
            stacklevel=3,
        )
        saved_run_id = None
    # `mlflow run` makes a new run per launch; resume into the earlier one with `mlflow run --run-id ID`
    run_id = os.environ.get("MLFLOW_RUN_ID") or saved_run_id
    if run_id:
        run = mlflow.start_run(run_id=run_id)
        if saved_run_id and saved_run_id != run_id:
            mlflow.set_tag("nfp.resumed_from_run", saved_run_id)
            _end_orphan(saved_run_id, continued_in=run_id)
        if "error" in run.data.tags:  # an earlier attempt's failure; this attempt's outcome is what counts
            mlflow.delete_tag("error")
        _say_where_it_logs(run, cfg.tracking.experiment)
    else:
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if not experiment_id:
            experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
            experiment_id = (
                experiment.experiment_id if experiment else mlflow.create_experiment(cfg.tracking.experiment)
            )
        run = mlflow.start_run(experiment_id=experiment_id, run_name=cfg.tracking.run_name)
    run_id = run.info.run_id
    _save_run_id(state_dir, run_id)
    _mark_as_model_training(run.info.experiment_id)
    commit = _git_commit()
    if commit:  # MLflow's own tag, shown as the run's source version in the UI
        mlflow.set_tag("mlflow.source.git.commit", commit)
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")}
    logger = RunLogger(run_id, state_dir, logged_steps=logged, experiment_id=run.info.experiment_id)
    _replay_backlog(logger, state_dir)
    try:
        yield logger
    except (KeyboardInterrupt, SystemExit):
        _end(mlflow, "KILLED")
        raise
    except BaseException as err:
        with contextlib.suppress(Exception):
            mlflow.set_tag("error", f"{type(err).__name__}: {first_line(err, 5000)}")
        _end(mlflow, "FAILED")
        raise
    _end(mlflow, "FINISHED")


def _end_orphan(run_id: str, *, continued_in: str) -> None:
    """A killed attempt's run that `mlflow run` did not resume: end it KILLED, pointing at the run that goes on."""
    import mlflow

    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status != "RUNNING":
        return
    client.set_tag(run_id, "nfp.continued_in_run", continued_in)
    client.set_terminated(run_id, status="KILLED")
    print(f"train: MLflow run {run_id} of the earlier attempt ended KILLED; this job continues in run {continued_in} "
          f"(to keep one run, rerun with `mlflow run --run-id {run_id}`)", file=sys.stderr)  # fmt: skip


EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI: GenAI views unless the experiment says model training


def _mark_as_model_training(experiment_id: str) -> None:
    """Tag the experiment as model training, so `mlflow ui` opens it on runs, charts and images (not traces); an
    experiment whose kind someone already set keeps it."""
    import mlflow

    client = mlflow.MlflowClient()
    if EXPERIMENT_KIND in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, "custom_model_development")
    except mlflow.exceptions.MlflowException as err:  # a view hint: not worth a run (e.g. no edit right on it)
        warnings.warn(
            f"could not tag experiment {experiment_id} as model training ({first_line(err, 160)})", stacklevel=2
        )


def _say_where_it_logs(run, experiment_name: str) -> None:
    """Under `mlflow run` the run's experiment is mlflow's choice, not tracking.experiment: say so when they differ."""
    import mlflow

    if not os.environ.get("MLFLOW_RUN_ID"):
        return
    actual = mlflow.get_experiment(run.info.experiment_id).name
    if actual != experiment_name:
        print(f"train: logging into run {run.info.run_id} of experiment {actual!r}, which `mlflow run` chose; "
              f"tracking.experiment {experiment_name!r} applies outside `mlflow run` "
              f"(pass --experiment-name {experiment_name} to use it)", file=sys.stderr)  # fmt: skip


def get_run(run_id: str, *, missing_ok: bool = False, error: type[Exception] = TrackingError, purpose: str = ""):
    """The MLflow run `run_id`. A run the store does not have: None if `missing_ok`, else `error` (one line naming the
    run and what it was wanted `purpose`); a store that cannot be asked: `error` always."""
    import mlflow

    try:
        return mlflow.MlflowClient().get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MlflowException for unknown ids, others for a bad store
        if missing_ok and getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise error(
            f"MLflow run {run_id}{purpose}: not found at {redact(mlflow.get_tracking_uri())} ({first_line(err)})"
        ) from None


def _git_commit() -> str | None:
    """The commit of the nfp checkout, when it is one (an installed wheel has none)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _end(mlflow, status: str) -> None:
    try:
        mlflow.end_run(status=status)
    except Exception as err:  # noqa: BLE001 - the server may be gone; the run id is saved for later
        warnings.warn(f"MLflow run could not be marked {status}: {first_line(err, 160)}", stacklevel=2)


def _saved_run_id(state_dir: str) -> str | None:
    from nfp import storage

    url = storage.join(state_dir, RUN_ID_FILE)
    return storage.read_bytes(url).decode().strip() or None if storage.exists(url) else None


def _save_run_id(state_dir: str, run_id: str) -> None:
    from nfp import storage

    storage.write_bytes(storage.join(state_dir, RUN_ID_FILE), run_id.encode())


def _backlog_path(state_dir, run_id: str) -> Path:
    """Kept on local disk: `<state_dir>/…` when local, else under ~/.cache/nfp (appends need a local file)."""
    from nfp import storage

    if not storage.is_local(str(state_dir)):
        return Path("~/.cache/nfp/tracking").expanduser() / f"{run_id}.jsonl"
    return storage.local_path(str(state_dir)) / BACKLOG_FILE


def _replay_backlog(logger: RunLogger, state_dir: str) -> None:
    """Log what an earlier attempt could not (server down), then set the backlog aside."""
    path = _backlog_path(state_dir, logger.run_id)
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    path.replace(path.with_suffix(".jsonl.replayed"))
    for line in lines:
        record = json.loads(line)
        if "metrics" in record:
            logger.log_metrics(record["metrics"], step=record["step"])
        elif "params" in record:
            logger.log_params(record["params"])
        elif "tags" in record:
            logger.set_tags(record["tags"])
        elif "artifact" in record and Path(record["artifact"]).exists():
            logger.log_artifact(record["artifact"], record["path"])
    log.info("replayed %d tracking records from %s", len(lines), path)
