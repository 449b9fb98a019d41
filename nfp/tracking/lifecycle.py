"""The run's lifecycle: one MLflow run per job, resumed across attempts, ended with the job's outcome."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow

from nfp.errors import first_line, redact
from nfp.tracking.backlog import replay_backlog
from nfp.tracking.logger import Inactive, RunLogger
from nfp.tracking.online import Online
from nfp.tracking.runs import get_run, read_run_id, save_run_id


@contextlib.contextmanager
def start_run(cfg, *, is_chief: bool, state_dir, model_flavor=None) -> Iterator[RunLogger]:
    """One MLflow run for this job: resumed (MLFLOW_RUN_ID, or the id saved in state_dir) or new. `model_flavor`:
    the module that logs a model and reads a saved one back (`log_model`, `load_saved`: nfp.inference.serving),
    handed in by the caller so that tracking imports no model code.

    Ends FINISHED on success; FAILED with the error as the `error` tag on an exception. A
    KeyboardInterrupt/SystemExit (SIGTERM on preemption) ends it KILLED so a restart resumes it.
    """
    if not (is_chief and cfg.tracking.enabled):
        yield Inactive()
        return
    # MLflow's default HTTP retries wait ~4 minutes per call; mid-training a dead server should cost
    # seconds before logging goes offline (an explicit setting of the user's wins).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    state_dir = str(state_dir)
    saved_run_id = read_run_id(state_dir)
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
        run = mlflow.start_run(run_id=run_id, log_system_metrics=cfg.tracking.system_metrics)
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
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=cfg.tracking.run_name, log_system_metrics=cfg.tracking.system_metrics
        )
    run_id = run.info.run_id
    save_run_id(state_dir, run_id)
    _mark_as_model_training(run.info.experiment_id)
    commit = _git_commit()
    if commit:  # MLflow's own tag, shown as the run's source version in the UI
        mlflow.set_tag("mlflow.source.git.commit", commit)
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")}
    logger = Online(
        run_id, state_dir, experiment_id=run.info.experiment_id, logged_steps=logged, model_flavor=model_flavor
    )
    replay_backlog(logger)
    try:
        yield logger
    except (KeyboardInterrupt, SystemExit):
        _end("KILLED")
        raise
    except BaseException as err:
        with contextlib.suppress(Exception):
            mlflow.set_tag("error", f"{type(err).__name__}: {first_line(err, 5000)}")
        _end("FAILED")
        raise
    _end("FINISHED")


def worker_system_metrics(state_dir, node_id: str):
    """A Keras callback for a worker other than the chief: MLflow's system metrics of its machine into the chief's
    run, as system/<node_id>/…, from its first batch (the chief has saved its run id in `state_dir` by then: fit's
    first step waits for every worker) to the end of training. Never fatal: a failure costs one warning."""
    import keras
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class WorkerSystemMetrics(keras.callbacks.Callback):
        monitor = None
        tried = False

        def on_train_batch_end(self, batch, logs=None):
            if self.tried:
                return
            self.tried = True
            try:
                run_id = read_run_id(str(state_dir))
                if run_id:
                    self.monitor = SystemMetricsMonitor(run_id, node_id=node_id, resume_logging=True)
                    self.monitor.start()
            except Exception as err:  # noqa: BLE001 - the worker's metrics are a view, not the training
                warnings.warn(f"{node_id}: system metrics not logged ({first_line(err, 160)})", stacklevel=2)

        def on_train_end(self, logs=None):
            if self.monitor is not None:
                self.monitor.finish()

    return WorkerSystemMetrics()


def _end_orphan(run_id: str, *, continued_in: str) -> None:
    """A killed attempt's run that `mlflow run` did not resume: end it KILLED, pointing at the run that goes on."""
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
    client = mlflow.MlflowClient()
    if EXPERIMENT_KIND in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, "custom_model_development")
    except mlflow.exceptions.MlflowException as err:  # a view hint: not worth a run (e.g. no edit right on it)
        with contextlib.suppress(Exception):  # another run of the experiment may have tagged it at the same moment
            if EXPERIMENT_KIND in client.get_experiment(experiment_id).tags:  # (the store's insert refused this one)
                return
        warnings.warn(
            f"could not tag experiment {experiment_id} as model training ({first_line(err, 160)})", stacklevel=2
        )


def _say_where_it_logs(run, experiment_name: str) -> None:
    """Under `mlflow run` the run's experiment is mlflow's choice, not tracking.experiment: say so when they differ."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return
    actual = mlflow.get_experiment(run.info.experiment_id).name
    if actual != experiment_name:
        print(f"train: logging into run {run.info.run_id} of experiment {actual!r}, which `mlflow run` chose; "
              f"tracking.experiment {experiment_name!r} applies outside `mlflow run` "
              f"(pass --experiment-name {experiment_name} to use it)", file=sys.stderr)  # fmt: skip


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


def _end(status: str) -> None:
    try:
        mlflow.end_run(status=status)
    except Exception as err:  # noqa: BLE001 - the server may be gone; the run id is saved for later
        warnings.warn(f"MLflow run could not be marked {status}: {first_line(err, 160)}", stacklevel=2)
