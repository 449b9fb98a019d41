"""MLflow glue: one run per training job, logged from the chief only, resumable, never fatal mid-training.

Tracking is one small interface, `RunLogger`, with a class per backend:
- `Inactive` (non-chief, tracking off): every call a no-op.
- `Online`: logs into the run through mlflow. Its first failing call warns once; that call and every later one go
  to an `Offline` backlog, and training goes on.
- `Offline`: the backlog `<state_dir>/tracking_backlog/`, numbered records (`000007.json`, its files in `000007/`)
  written through nfp.storage (local or gs://), each with durable copies of what it logs: an artifact's files, an
  image as .npy, a figure as PNG, a model saved as .keras with its input example.
The job's next `start_run` replays the backlog into the same run, in order, deleting each record once it is logged.

- The run is the one `mlflow run` created (MLFLOW_RUN_ID), else the one saved in the job's state
  dir by an earlier attempt (resume after preemption), else a new one; its id is saved there.
- Metric steps are epochs counted from 1; a step already in the run is not logged again, so a
  resumed job never duplicates an epoch.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types import Schema, TensorSpec
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.uri import is_local_uri

from nfp import storage
from nfp.errors import TrackingError, first_line, redact

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
BACKLOG_DIR = "tracking_backlog"


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


def log_files(run_id: str, paths, artifact_dir: str) -> None:
    """Log files (local or remote paths) into an existing run's `artifact_dir`."""
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
    """What training logs through; the backends below implement it. Here every call is a no-op."""

    active = False
    run_id: str | None = None
    ui_url: str | None = None

    def log_params(self, params: dict) -> None:
        """Params are immutable in MLflow: on resume, ones already logged are skipped, changed ones warned about."""

    def set_tags(self, tags: dict) -> None:
        """Tags, values redacted."""

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Scalars at `step` (epoch, from 1); a step already logged in this run is skipped."""

    def log_artifact(self, local_path, artifact_path: str | None = None) -> None:
        """A local file, or a directory's contents, into the run's `artifact_path`."""

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """A stepped image series `(H, W, 3)` uint8 (mlflow.log_image with key/step): the UI shows a step slider."""

    def log_figure(self, fig, artifact_file: str) -> None:
        """A matplotlib figure as the PNG artifact `artifact_file` (e.g. plots/history.png)."""

    def log_model(
        self,
        model,
        input_example: np.ndarray,
        register_as: str | None = None,
        horizon: int | None = None,
        alias: str | None = None,
    ) -> None:
        """The model as MLflow serves it (nfp.serving): `input_example` context frames (1, k, H, W, C) float32 in
        [0, 1] in, the next `horizon` frames out (a request param, default `horizon`, else evaluate.predict_frames'
        default); registered as `register_as`, that version given `alias`."""

    def log_dataset(self, name: str, digest: str, source: str, clip_shape: list, counts: dict) -> None:
        """The training data as the run's MLflow dataset input: `digest` (the manifest id) finds runs on the same
        data; its schema is the clips' (T, H, W) and its tags the clips per split."""

    def keras_callback(self):
        """A Keras callback logging each epoch's scalar logs (loss, val_loss, learning_rate, …) at step epoch+1."""
        import keras

        logger = self

        class EpochMetricsToMlflow(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logger.log_metrics(dict(logs or {}), step=epoch + 1)

        return EpochMetricsToMlflow()


class Inactive(RunLogger):
    """Not the chief, or tracking off: nothing is logged anywhere."""


def _offline_on_failure(what: str):
    """An Online method whose failure costs a warning (once), not the training: that call and every later one go
    to the Offline backlog. While the backlog is replayed, failures are raised to the replay instead."""

    def decorate(method):
        @functools.wraps(method)
        def call(self: Online, *args, **kwargs):
            if self.offline is None:
                try:
                    return method(self, *args, **kwargs)
                except Exception as err:  # tracking must not kill training
                    if self._replaying:
                        raise
                    self.go_offline(what, err)
            return getattr(self.offline, method.__name__)(*args, **kwargs)

        return call

    return decorate


class Online(RunLogger):
    """Logs into the active MLflow run `run_id`; after the first failure, into the backlog under `state_dir`."""

    active = True

    def __init__(self, run_id: str, state_dir, *, experiment_id: str = "", logged_steps=()):
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.backlog = storage.join(str(state_dir), BACKLOG_DIR)
        self.offline: Offline | None = None
        self._logged_steps = set(logged_steps)
        self._replaying = False

    @property
    def ui_url(self) -> str | None:
        """The run's page on the tracking server's UI, opened in its model-training views (MLflow 3 opens the GenAI
        ones unless asked); None off a server."""
        uri = mlflow.get_tracking_uri()
        if not uri.startswith(("http://", "https://")):
            return None
        page = f"#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"
        return f"{redact(uri).rstrip('/')}/{page}"

    def go_offline(self, what: str, err: BaseException) -> None:
        self.offline = Offline(self.backlog, run_id=self.run_id)
        warnings.warn(
            f"MLflow logging failed ({what}: {first_line(err, 160)}); "
            f"training continues, unlogged records go to {self.backlog}",
            stacklevel=3,
        )

    @contextlib.contextmanager
    def _failures_raise(self) -> Iterator[None]:
        self._replaying = True
        try:
            yield
        finally:
            self._replaying = False

    @_offline_on_failure("params")
    def log_params(self, params: dict) -> None:
        clean = _clean_params(params)
        existing = mlflow.MlflowClient().get_run(self.run_id).data.params
        changed = sorted(k for k in clean if k in existing and existing[k] != clean[k])
        if changed:
            warnings.warn(
                f"resumed run {self.run_id} keeps its original params; changed now: {', '.join(changed)}", stacklevel=3
            )
        new = {k: v for k, v in clean.items() if k not in existing}
        if new:
            mlflow.log_params(new)

    @_offline_on_failure("tags")
    def set_tags(self, tags: dict) -> None:
        mlflow.set_tags(_clean_tags(tags))

    @_offline_on_failure("metrics")
    def log_metrics(self, metrics: dict, step: int) -> None:
        if step in self._logged_steps:
            return
        mlflow.log_metrics(_scalars(metrics), step=step)
        self._logged_steps.add(step)

    @_offline_on_failure("artifact")
    def log_artifact(self, local_path, artifact_path: str | None = None) -> None:
        local_path = str(local_path)
        if Path(local_path).is_dir():
            mlflow.log_artifacts(local_path, artifact_path)
        else:
            mlflow.log_artifact(local_path, artifact_path)

    @_offline_on_failure("image")
    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        # synchronous: MLflow's default uploads in a thread whose failure is lost, and the image with it
        mlflow.log_image(np.asarray(image, np.uint8), key=key, step=step, synchronous=True)

    @_offline_on_failure("figure")
    def log_figure(self, fig, artifact_file: str) -> None:
        mlflow.log_figure(fig, artifact_file)

    @_offline_on_failure("dataset")
    def log_dataset(self, name: str, digest: str, source: str, clip_shape: list, counts: dict) -> None:
        try:
            where = resolve_dataset_source(source)
        except Exception:  # noqa: BLE001 - a scheme MLflow has no source class for: its URL as the source
            where = HTTPDatasetSource(source)
        clips = Schema([TensorSpec(np.dtype(np.uint8), (-1, *clip_shape), name="clips")])
        dataset = MetaDataset(where, name=name, digest=digest, schema=clips)
        tags = {f"{split}_clips": str(count) for split, count in counts.items()}
        mlflow.log_input(dataset, context="training", tags=tags)

    @_offline_on_failure("model")
    def log_model(self, model, input_example, register_as=None, horizon=None, alias=None) -> None:
        import keras
        import tensorflow as tf

        from nfp import serving

        # Said, not inferred: what the served model imports besides mlflow (nfp's code travels with it). MLflow's
        # inference would load the model in a subprocess, and list what that happens to import.
        requirements = [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"]
        with _no_progress_bars():  # MLflow predicts the example to validate it
            info = serving.log_model(
                model,
                input_example,
                horizon=horizon or _default_horizon(),
                requirements=requirements,
                registered_model_name=register_as,
            )
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(register_as, alias, info.registered_model_version)


def _lost_with_a_warning(method):
    """An Offline method whose failure (a full disk, an unreachable bucket) loses that record with a warning, the
    first time, not the training."""

    @functools.wraps(method)
    def call(self: Offline, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must not kill training
            if not self._failed:
                self._failed = True
                warnings.warn(
                    f"tracking backlog {self.url} could not be written ({first_line(err, 160)}): the "
                    f"{method.__name__} record is lost, and so is any later one that fails",
                    stacklevel=4,
                )

    return call


class Offline(RunLogger):
    """The backlog of a run whose server is gone: record N is `NNNNNN.json` plus its files in `NNNNNN/`.

    The files are written first, the JSON last and atomically (nfp.storage: a temporary name then a rename, or a
    GCS object that appears whole): a record exists only complete. It holds copies, never a path to the caller's
    (often temporary) files, so it can be replayed after the process, or the VM, is gone.
    """

    active = True

    def __init__(self, url: str, run_id: str | None = None):
        self.url = url
        self.run_id = run_id
        self._next: int | None = None
        self._failed = False

    @_lost_with_a_warning
    def log_params(self, params: dict) -> None:
        self._write({"kind": "params", "params": _clean_params(params)})

    @_lost_with_a_warning
    def set_tags(self, tags: dict) -> None:
        self._write({"kind": "tags", "tags": _clean_tags(tags)})

    @_lost_with_a_warning
    def log_metrics(self, metrics: dict, step: int) -> None:
        self._write({"kind": "metrics", "metrics": _scalars(metrics), "step": step})

    @_lost_with_a_warning
    def log_artifact(self, local_path, artifact_path: str | None = None) -> None:
        src = Path(local_path)
        if src.is_dir():
            files = {f"{src.name}/{p.relative_to(src).as_posix()}": p for p in sorted(src.rglob("*")) if p.is_file()}
        else:
            files = {src.name: src}
        self._write({"kind": "artifact", "name": src.name, "artifact_path": artifact_path}, files)

    @_lost_with_a_warning
    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self._write({"kind": "image", "key": key, "step": step}, {"image.npy": _npy(np.asarray(image, np.uint8))})

    @_lost_with_a_warning
    def log_figure(self, fig, artifact_file: str) -> None:
        """Kept as the PNG that mlflow.log_figure would upload, replayed as the artifact `artifact_file`."""
        folder, _, name = artifact_file.rpartition("/")
        png = io.BytesIO()
        fig.savefig(png, format="png")
        self._write({"kind": "artifact", "name": name, "artifact_path": folder or None}, {name: png.getvalue()})

    @_lost_with_a_warning
    def log_dataset(self, name: str, digest: str, source: str, clip_shape: list, counts: dict) -> None:
        self._write({"kind": "dataset", "dataset": [name, digest, source, list(clip_shape), dict(counts)]})

    @_lost_with_a_warning
    def log_model(self, model, input_example, register_as=None, horizon=None, alias=None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp, "model.keras")
            model.save(saved)
            self._write(
                {"kind": "model", "register_as": register_as, "horizon": horizon, "alias": alias},
                {"model.keras": saved, "input_example.npy": _npy(np.asarray(input_example))},
            )

    # -- the records
    def _write(self, record: dict, files: dict[str, bytes | Path] | None = None) -> None:
        files = files or {}
        name = f"{self._take_number():06d}"
        for rel, data in files.items():
            content = data if isinstance(data, bytes) else Path(data).read_bytes()
            storage.write_bytes(storage.join(self.url, f"{name}/{rel}"), content)
        record = {**record, "files": sorted(files)}
        storage.write_bytes(storage.join(self.url, f"{name}.json"), json.dumps(record).encode())  # last: complete

    def _take_number(self) -> int:
        if self._next is None:  # after every record or half-written folder already there
            numbers = [int(n.split(".")[0]) for n in storage.listdir(self.url) if n.split(".")[0].isdigit()]
            self._next = max(numbers, default=0) + 1
        number, self._next = self._next, self._next + 1
        return number

    def records(self) -> list[tuple[str, dict]]:
        """(name, record) of each complete record, oldest first; half-written ones (no JSON) are removed."""
        names = [n for n in storage.listdir(self.url) if not n.startswith(".")]
        complete = sorted((n.removesuffix(".json") for n in names if n.endswith(".json")), key=int)
        for orphan in set(names) - set(complete) - {f"{n}.json" for n in complete}:
            _remove_tree(storage.join(self.url, orphan))
        return [(n, json.loads(storage.read_bytes(storage.join(self.url, f"{n}.json")))) for n in complete]

    def files_of(self, name: str, record: dict, tmp: str) -> Path:
        """A local directory holding the record's files (downloaded into tmp when the backlog is remote)."""
        folder = storage.join(self.url, name)
        if storage.is_local(folder):
            return storage.local_path(folder)
        for rel in record["files"]:
            local = Path(tmp, rel)
            local.parent.mkdir(parents=True, exist_ok=True)
            storage.get(storage.join(folder, rel), local)
        return Path(tmp)

    def remove(self, name: str) -> None:
        storage.remove(storage.join(self.url, f"{name}.json"))  # first: from here on the record is gone whole
        _remove_tree(storage.join(self.url, name))

    def clear(self) -> None:
        _remove_tree(self.url)


def _remove_tree(url: str) -> None:
    if storage.is_local(url):
        path = storage.local_path(url)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    elif storage.scheme(url) in storage.TF_ONLY:
        import tensorflow as tf

        if tf.io.gfile.isdir(url):
            tf.io.gfile.rmtree(url)
        elif tf.io.gfile.exists(url):
            tf.io.gfile.remove(url)
    else:
        fs, path = storage.filesystem(url)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)
        fs.invalidate_cache()


def _replay_backlog(online: Online) -> None:
    """Log what an earlier attempt could not, record by record, each deleted once logged. A server that fails
    again stops the replay (that record and the rest stay for the next attempt); a record the server refuses while
    it answers would fail every time, so it is dropped with a warning."""
    backlog = Offline(online.backlog)
    records = backlog.records()
    for done, (name, record) in enumerate(records):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                files = backlog.files_of(name, record, tmp)
            except Exception as err:  # noqa: BLE001 - the state dir's store, not the record: keep it for next time
                warnings.warn(f"tracking backlog {backlog.url} could not be read ({first_line(err, 160)}): "
                              f"{len(records) - done} record(s) kept for the next attempt", stacklevel=3)  # fmt: skip
                return
            try:
                method, args = _replay_call(record, files)
            except Exception as err:  # noqa: BLE001 - an unreadable record must not block the others
                warnings.warn(
                    f"tracking backlog record {name} unreadable ({first_line(err, 160)}): dropped", stacklevel=3
                )
                backlog.remove(name)
                continue
            try:
                with online._failures_raise():
                    getattr(online, method)(*args)
            except Exception as err:  # noqa: BLE001 - the server, or this record
                if _server_answers(online.run_id):
                    warnings.warn(
                        f"tracking backlog record {name} ({record['kind']}) refused by the tracking server "
                        f"({first_line(err, 160)}): dropped",
                        stacklevel=3,
                    )
                else:
                    online.go_offline(f"replaying {record['kind']}", err)
                    log.info("replayed %d of %d tracking records from %s", done, len(records), backlog.url)
                    return
        backlog.remove(name)
    backlog.clear()
    if records:
        log.info("replayed %d tracking records from %s", len(records), backlog.url)


def _replay_call(record: dict, files: Path) -> tuple[str, tuple]:
    """The Online method and arguments that log `record`, its files read from `files`."""
    kind = record["kind"]
    if kind == "params":
        return "log_params", (record["params"],)
    if kind == "tags":
        return "set_tags", (record["tags"],)
    if kind == "metrics":
        return "log_metrics", (record["metrics"], record["step"])
    if kind == "artifact":
        return "log_artifact", (str(files / record["name"]), record["artifact_path"])
    if kind == "image":
        return "log_image", (np.load(files / "image.npy"), record["key"], record["step"])
    if kind == "dataset":
        return "log_dataset", tuple(record["dataset"])
    if kind == "model":
        import keras

        from nfp.models import register_layers

        register_layers()  # nfp's custom layers, for loading
        model = keras.saving.load_model(files / "model.keras", compile=False)
        example = np.load(files / "input_example.npy")
        # records from before horizon and alias have neither: the defaults
        return "log_model", (model, example, record["register_as"], record.get("horizon"), record.get("alias"))
    raise ValueError(f"unknown record kind {kind!r}")


def _server_answers(run_id: str) -> bool:
    try:
        with _fail_fast_http():
            mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - any failure: it does not
        return False
    return True


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if _is_scalar(v)}


def _clean_params(params: dict) -> dict[str, str]:
    return {k: _param_value(v) for k, v in params.items()}


def _clean_tags(tags: dict) -> dict[str, str]:
    return {k: redact(str(v)) for k, v in tags.items()}


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


def _default_horizon() -> int:
    """evaluate.predict_frames' default: how many frames a served model predicts when neither caller nor request says."""
    from nfp.config import EvaluateConfig

    return EvaluateConfig.predict_frames


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
        yield Inactive()
        return
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
    _save_run_id(state_dir, run_id)
    _mark_as_model_training(run.info.experiment_id)
    commit = _git_commit()
    if commit:  # MLflow's own tag, shown as the run's source version in the UI
        mlflow.set_tag("mlflow.source.git.commit", commit)
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")}
    logger = Online(run_id, state_dir, experiment_id=run.info.experiment_id, logged_steps=logged)
    _replay_backlog(logger)
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
                run_id = _saved_run_id(str(state_dir))
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
    saved, given = _saved_run_id(str(state_dir)), os.environ.get("MLFLOW_RUN_ID")
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


def _saved_run_id(state_dir: str) -> str | None:
    url = storage.join(state_dir, RUN_ID_FILE)
    return storage.read_bytes(url).decode().strip() or None if storage.exists(url) else None


def _save_run_id(state_dir: str, run_id: str) -> None:
    storage.write_bytes(storage.join(state_dir, RUN_ID_FILE), run_id.encode())
