"""The one interface training logs through (`RunLogger`) and its no-op backend; the values it logs made clean."""

from __future__ import annotations

import json

import numpy as np

from nfp.errors import redact


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

    def log_model(
        self,
        model,
        input_example: np.ndarray,
        register_as: str | None = None,
        horizon: int | None = None,
        alias: str | None = None,
    ) -> None:
        """The model as MLflow serves it (nfp.inference.serving): `input_example` context frames (1, k, H, W, C) float32 in
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


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if _is_scalar(v)}


def clean_params(params: dict) -> dict[str, str]:
    return {k: _param_value(v) for k, v in params.items()}


def clean_tags(tags: dict) -> dict[str, str]:
    return {k: redact(str(v)) for k, v in tags.items()}


def _is_scalar(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return redact(text)[:6000]
