"""The logged model as MLflow's clients serve it: the last k frames in, the next `horizon` frames out.

One MLflow model, two flavors over one .keras file (`artifacts/model.keras`):
- `python_function` (`mlflow.pyfunc.load_model`, `mlflow models serve` / `predict`): `Forecaster` below, with nfp's
  own code in the model's `code/` (MLflow puts it on sys.path before loading), so nothing but the model's
  requirements (mlflow, keras, tensorflow, numpy) is needed to load and serve it.
- `keras` (`mlflow.keras.load_model`): the Keras model itself, after `nfp.models.register_layers()` (nfp installed, as always
  for nfp's own checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

ARTIFACT = "keras_model"  # the name Forecaster finds the .keras file under in its context
# The model "from code" MLflow runs to make the pyfunc model (no pickle: MLflow warns against one, and it would tie
# the model to this process's cloudpickle); nfp's code is on sys.path by then.
MODEL_CODE = "import mlflow\n\nfrom nfp.inference.serving import Forecaster\n\nmlflow.models.set_model(Forecaster())\n"
MAX_HORIZON = 1000  # a request for more frames than this is refused, not allowed to take the server's memory


def signature(frame_shape: tuple[int, ...], horizon: int) -> ModelSignature:
    """→ the rollout (batch, horizon, H, W, C) float32 in [0, 1]; `horizon` a request param, default `horizon`.

    No input schema: MLflow would check the context frames against one before `Forecaster.predict` does, and answer a
    bad request with a message holding the request's whole data, many lines; and over JSON it would turn the
    integers of 0–255 frames into floats. The frames (batch, k, H, W, C) are described in the MLmodel's metadata.
    """
    return ModelSignature(
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, *frame_shape))]),  # batch and horizon: the request's
        params=ParamSchema([ParamSpec("horizon", "long", horizon)]),
    )


def log_model(model, context_example: np.ndarray, *, horizon: int, registered_model_name=None):
    """Log `model` (a keras.Model of nfp's layers) as the serving model "model" of the active run; → MLflow's
    ModelInfo. `context_example`: (1, k, H, W, C) float32 in [0, 1], the request example (with `horizon`)."""
    import keras
    import tensorflow as tf

    context_example = np.asarray(context_example, np.float32)
    shape = ", ".join(map(str, context_example.shape[2:]))
    # Said, not inferred: what the served model imports besides mlflow (nfp's code travels with it). MLflow's
    # inference would load the model in a subprocess, and list what that happens to import.
    requirements = [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"]
    with tempfile.TemporaryDirectory(prefix="nfp-serving-") as tmp, _no_progress_bars():  # MLflow predicts the example
        saved = Path(tmp, "model.keras")
        model.save(saved)
        return Model.log(
            artifact_path=None,
            name="model",
            flavor=sys.modules[__name__],  # save_model below: pyfunc's, plus the keras flavor
            flavor_name="pyfunc.ModelFromCode",
            keras_file=str(saved),
            signature=signature(context_example.shape[2:], horizon),
            input_example=(context_example, {"horizon": horizon}),
            metadata={"context": f"(batch, k, {shape}): integers 0–255 or floats 0–1", "horizon": "frames to predict"},
            model_config={"context_frames": int(context_example.shape[1]), "horizon": horizon},
            pip_requirements=requirements,
            registered_model_name=registered_model_name,
        )


def load_saved(path):
    """A .keras file of nfp's model, as `model.save` wrote it (the tracking backlog's copy), uncompiled."""
    import keras

    from nfp.models import register_layers

    register_layers()  # nfp's custom layers, for loading
    return keras.saving.load_model(path, compile=False)


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


def save_model(path, mlflow_model: Model, *, keras_file: str, **pyfunc_kwargs) -> None:
    """The flavor hook `Model.log` calls: the pyfunc model with nfp's code and the .keras file, whose MLmodel also
    lists the keras flavor of that same file (mlflow.keras reads `<data>/model.keras`)."""
    import keras

    import nfp

    mlflow_model.add_flavor(
        "keras",
        data="artifacts",
        keras_version=keras.__version__,
        keras_backend=keras.backend.backend(),
        save_exported_model=False,
    )
    with tempfile.TemporaryDirectory(prefix="nfp-serving-") as tmp:
        code = Path(tmp, "forecaster.py")
        code.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(
            path,
            mlflow_model=mlflow_model,
            python_model=str(code),
            artifacts={ARTIFACT: keras_file},
            code_paths=[os.path.dirname(nfp.__file__)],  # the nfp package: layers, rollout, this module
            **pyfunc_kwargs,
        )


class Forecaster(mlflow.pyfunc.PythonModel):
    """The pyfunc model: (batch, k, H, W, C) context frames, integers 0–255 or floats 0–1 → the `horizon` frames
    that follow, (batch, horizon, H, W, C) float32 in [0, 1] — `nfp predict`'s rollout."""

    def load_context(self, context) -> None:
        import keras

        from nfp.models import register_layers

        register_layers()  # nfp's layers, for deserialisation
        self.model = keras.saving.load_model(context.artifacts[ARTIFACT], compile=False)
        self.frame_shape = tuple(self.model.inputs[0].shape[2:])
        config = context.model_config or {}
        self.horizon = int(config.get("horizon", 1))
        # the first request would trace the rollout: trace it now, for the example's shape
        k = int(config.get("context_frames", 1))
        self.predict(context, np.zeros((1, k, *self.frame_shape), np.float32), {"horizon": self.horizon})

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        from nfp.errors import ModelError
        from nfp.models import check_context, rollout

        frames = scaled_context(model_input, self.frame_shape)
        horizon = (params or {}).get("horizon", self.horizon)
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or not 1 <= horizon <= MAX_HORIZON:
            raise BadRequest(f"horizon: got {horizon!r}, expected an integer from 1 to {MAX_HORIZON}")
        try:
            check_context(self.model, frames.shape[1], "context frames (k)")
        except ModelError as err:
            raise BadRequest(str(err)) from None
        # the signature's range even where the head is linear: a client scaling by 255 into uint8 never wraps around
        return np.clip(rollout(self.model, frames, int(horizon)), 0.0, 1.0)


def scaled_context(frames, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Request frames → (batch, k, H, W, C) float32 in [0, 1]: integers are 0–255 and divided by 255 (as `nfp
    predict` reads clips), floats are 0–1. A bad request raises BadRequest, one line."""
    wanted = f"(batch, k, {', '.join(map(str, frame_shape))})"
    try:
        arr = np.asarray(frames)
    except ValueError:  # numpy: "setting an array element with a sequence…", many words for a ragged list
        raise BadRequest(f"context: a ragged list (rows of different lengths), expected {wanted}") from None
    if arr.ndim != 5:
        raise BadRequest(f"context: got shape {arr.shape}, expected {wanted}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise BadRequest(f"context: got shape {arr.shape}, expected {wanted} with batch >= 1 and k >= 1")
    if tuple(arr.shape[2:]) != tuple(frame_shape):
        given, taken = "×".join(map(str, arr.shape[2:])), "×".join(map(str, frame_shape))
        raise BadRequest(f"context: frames are {given}, the model takes {taken} (H×W×C)")
    if np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
        if arr.min() < 0 or arr.max() > 255:
            raise BadRequest(f"context: integer values {arr.min()}..{arr.max()}, expected 0–255")
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise BadRequest(f"context: got {arr.dtype} values, expected integers 0–255 or floats 0–1")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise BadRequest("context: float values must be finite and 0–1 (send 0–255 frames as integers)")
    return arr


class BadRequest(MlflowException):
    """A client's bad request: MLflow's scoring server answers it with HTTP 400 and this one line.

    The server prefixes the request's whole data to the message of any error predict raises (mlflow 3.17,
    pyfunc/scoring_server `invocations`: `e.message = f"Failed to predict data '{data}'..."`), many lines for a clip:
    this error's message stays the line it was raised with."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):  # MlflowException.__init__'s, the first: later ones are the server's prefix
            self._line = value
