"""The online backend: logs into the MLflow run, and into the backlog from its first failure on."""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types import Schema, TensorSpec

from nfp import storage
from nfp.errors import first_line, redact
from nfp.tracking.backlog import BACKLOG_DIR, Offline
from nfp.tracking.logger import RunLogger, clean_params, clean_tags, scalars
from nfp.tracking.runs import server_answers


def _offline_on_failure(what: str):
    """An Online method whose failure costs a warning (once), not the training: that call and every later one go
    to the Offline backlog. A call the server refuses while it answers is tried once more first. While the backlog is
    replayed, failures are raised to the replay instead."""

    def decorate(method):
        @functools.wraps(method)
        def call(self: Online, *args, **kwargs):
            if self.offline is None:
                try:
                    return _again_if_refused(method, self, *args, **kwargs)
                except Exception as err:  # tracking must not kill training
                    if self._replaying:
                        raise
                    self.go_offline(what, err)
            return getattr(self.offline, method.__name__)(*args, **kwargs)

        return call

    return decorate


def _again_if_refused(method, self: Online, *args, **kwargs):
    """`method`, tried a second time when it fails while the server answers. Two jobs writing one row at once lose
    a write: MLflow checks then inserts a dataset input, so two runs of an experiment logging the same data set
    together (a sweep's first trials) get a UNIQUE constraint error for one of them, and the second try finds the row.
    A server that does not answer is an outage: no second try."""
    try:
        return method(self, *args, **kwargs)
    except Exception:
        if not server_answers(self.run_id):
            raise
    return method(self, *args, **kwargs)


class Online(RunLogger):
    """Logs into the active MLflow run `run_id`; after the first failure, into the backlog under `state_dir`."""

    active = True

    def __init__(self, run_id: str, state_dir, *, experiment_id: str = "", logged_steps=(), model_flavor=None):
        self.run_id = run_id
        self.model_flavor = model_flavor  # how a model is logged and read back (nfp.inference.serving)
        self.experiment_id = experiment_id
        self.backlog = storage.join(str(state_dir), BACKLOG_DIR)
        self.offline: Offline | None = None
        self._logged_steps = set(logged_steps)
        self._logged_images: set[tuple[str, int]] | None = None  # (key, step) already in the run, read once
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
        clean = clean_params(params)
        existing = mlflow.MlflowClient().get_run(self.run_id).data.params
        changed = sorted(k for k in clean if k in existing and existing[k] != clean[k])
        if changed:  # stacklevel: the logger's caller, past the decorator's two frames
            warnings.warn(
                f"resumed run {self.run_id} keeps its original params; changed now: {', '.join(changed)}", stacklevel=4
            )
        new = {k: v for k, v in clean.items() if k not in existing}
        if new:
            mlflow.log_params(new)

    @_offline_on_failure("tags")
    def set_tags(self, tags: dict) -> None:
        mlflow.set_tags(clean_tags(tags))

    @_offline_on_failure("metrics")
    def log_metrics(self, metrics: dict, step: int) -> None:
        if step in self._logged_steps:
            return
        mlflow.log_metrics(scalars(metrics), step=step)
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
        """Once per (key, step) in the run: a job interrupted after logging a step's image and run again (the
        untrained model's step 0 above all) does not log it twice."""
        if self._logged_images is None:
            self._logged_images = _image_steps(self.run_id)
        if (key, step) in self._logged_images:
            return
        # synchronous: MLflow's default uploads in a thread whose failure is lost, and the image with it
        mlflow.log_image(np.asarray(image, np.uint8), key=key, step=step, synchronous=True)
        self._logged_images.add((key, step))

    @_offline_on_failure("dataset")
    def log_dataset(self, name: str, digest: str, source: str, clip_shape: list, counts: dict) -> None:
        try:
            with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so on every run
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple")
                where = resolve_dataset_source(source)
        except Exception:  # noqa: BLE001 - a scheme MLflow has no source class for: its URL as the source
            where = HTTPDatasetSource(source)
        clips = Schema([TensorSpec(np.dtype(np.uint8), (-1, *clip_shape), name="clips")])
        dataset = MetaDataset(where, name=name, digest=digest, schema=clips)
        tags = {f"{split}_clips": str(count) for split, count in counts.items()}
        mlflow.log_input(dataset, context="training", tags=tags)

    @_offline_on_failure("model")
    def log_model(self, model, input_example, register_as=None, horizon=None, alias=None) -> None:
        if self.model_flavor is None:
            raise TypeError("this run was started without a model_flavor: it cannot log a model")
        info = self.model_flavor.log_model(
            model, input_example, horizon=horizon or _default_horizon(), registered_model_name=register_as
        )
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(register_as, alias, info.registered_model_version)


def _default_horizon() -> int:
    """evaluate.predict_frames' default: how many frames a served model predicts when neither caller nor request says."""
    from nfp.config import EvaluateConfig

    return EvaluateConfig.predict_frames


def _image_steps(run_id: str) -> set[tuple[str, int]]:
    """(key, step) of every stepped image in the run: MLflow stores each as images/<key, / as ~>+step+<step>+….png."""
    found = set()
    for artifact in mlflow.MlflowClient().list_artifacts(run_id, "images"):
        match = re.match(r"images/(.+?)\+step\+(\d+)\+", artifact.path)
        if match:
            found.add((match.group(1).replace("~", "/"), int(match.group(2))))
    return found
