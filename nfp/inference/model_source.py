"""Where a model comes from: a .keras checkpoint (local or remote), an MLflow run id, or a runs:/ or models:/ URI."""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

from nfp import storage
from nfp.errors import ModelError, first_line
from nfp.tracking import get_run

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def load_model(model_uri: str):
    """A keras.Model from a checkpoint .keras path, an MLflow run id, or a runs:/ or models:/ URI."""
    return resolve_model(model_uri)[0]


def resolve_model(model_uri: str):
    """(model, id of the MLflow run it came from or None, the concrete source loaded) for load_model's sources."""
    if not model_uri.strip():
        raise ModelError(
            "--model: empty, expected a .keras checkpoint path, an MLflow run id, runs:/… or models:/… URI"
        )
    source = _run_model_uri(model_uri) if _RUN_ID.match(model_uri) and not os.path.exists(model_uri) else model_uri
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        get_run(run_id, error=ModelError)
        if path.endswith((".keras", ".h5")):
            return _load_run_artifact(run_id, path), run_id, source
        return _load_mlflow_model(source), run_id, source
    if source.startswith("models:/"):
        model = _load_mlflow_model(source)
        return model, _model_source_run(source), source
    return _load_checkpoint(source), None, source


def _load_checkpoint(path: str, name: str | None = None):
    """The Keras model in the .keras file `path`; errors name it `name` (default `path`): where the user put it."""
    import keras

    from nfp.models import (
        optim,  # noqa: F401 - registers nfp's LR schedules: a checkpoint saved with its optimizer loads
        register_layers,
    )

    register_layers()  # nfp's layers, for deserialisation
    name = name or path
    if not storage.exists(path):
        raise ModelError(
            f"checkpoint {name}: not found (expected a .keras file, an MLflow run id, runs:/… or models:/… URI)"
        )
    if storage.is_dir(path):
        raise ModelError(f"checkpoint {name}: is a directory, expected a .keras file")
    local = storage.local_path(path) if storage.is_local(path) else None
    size = f"{local.stat().st_size:,} bytes; " if local else ""
    not_a_model = f"checkpoint {name}: not a Keras model file ({size}a .keras file is a zip archive): truncated, or another format"
    if local and not zipfile.is_zipfile(local):
        raise ModelError(not_a_model)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:
        if "File not found" in str(err):  # Keras's words for a remote file it could not open as a model
            raise ModelError(not_a_model) from None
        raise ModelError(f"checkpoint {name}: cannot be loaded as a Keras model ({first_line(err)})") from err


def _load_mlflow_model(uri: str):
    import mlflow.keras

    from nfp.models import register_layers

    register_layers()  # nfp's layers, for deserialisation
    try:
        return mlflow.keras.load_model(uri)
    except Exception as err:
        raise ModelError(f"MLflow model {uri}: cannot be loaded ({first_line(err)})") from err


def _load_run_artifact(run_id: str, path: str):
    import mlflow

    # the download is gone once loaded (Keras holds the model in memory): each serve or evaluate left a copy in /tmp
    with tempfile.TemporaryDirectory(prefix="nfp-model-") as dst:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst)
        except Exception as err:  # noqa: BLE001
            raise ModelError(f"MLflow run {run_id}: no artifact {path} ({first_line(err)})") from None
        return _load_checkpoint(local, name=f"runs:/{run_id}/{path}")  # not the download's path, gone after


def _run_model_uri(run_id: str) -> str:
    """A run's best checkpoint artifact (selected on validation, as OpenSTL tests), else its logged model, else any .keras."""
    import mlflow

    run = get_run(run_id, error=ModelError)
    checkpoints = sorted(
        _keras_artifacts(mlflow.MlflowClient(), run_id, None), key=lambda p: ("best" not in Path(p).name, p)
    )
    if checkpoints and "best" in Path(checkpoints[0]).name:
        return f"runs:/{run_id}/{checkpoints[0]}"
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    if models:
        return f"models:/{max(models, key=lambda m: m.creation_timestamp).model_id}"
    if checkpoints:
        return f"runs:/{run_id}/{checkpoints[0]}"
    raise ModelError(f"MLflow run {run_id}: has no .keras checkpoint artifact and no logged model")


def _keras_artifacts(client, run_id: str, path: str | None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found += _keras_artifacts(client, run_id, item.path)
        elif item.path.endswith(".keras"):
            found.append(item.path)
    return found


def logged_model_id(source: str) -> str | None:
    """The MLflow 3 LoggedModel a models:/ source names (models:/m-ID, models:/NAME/VERSION, models:/NAME@ALIAS), so
    scores can be logged onto it; None for checkpoints and runs:/ files."""
    if not source.startswith("models:/"):
        return None
    ref = source.removeprefix("models:/").strip("/")
    if ref.startswith("m-") and "/" not in ref:
        return ref
    version = _registered_version(ref)
    if version is None or version.model_id:
        return version and version.model_id
    # some stores leave model_id empty; the version's source is then models:/m-ID (none before MLflow 3)
    origin = version.source or ""
    return origin.removeprefix("models:/") if origin.startswith("models:/m-") else None


def _model_source_run(uri: str) -> str | None:
    """The run a models:/ URI was logged from (models:/m-ID, models:/NAME/VERSION, models:/NAME@ALIAS)."""
    import mlflow

    ref = uri.removeprefix("models:/").strip("/")
    if ref.startswith("m-") and "/" not in ref:
        try:
            return mlflow.get_logged_model(ref).source_run_id
        except Exception:  # noqa: BLE001 - the model loaded; its lineage is a nice-to-have
            return None
    version = _registered_version(ref)
    return version.run_id if version else None


def _registered_version(ref: str):
    """The model version `NAME/VERSION` or `NAME@ALIAS` names, or None when the registry cannot say (the model
    loaded already: what depends on its version is a nice-to-have)."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, number = ref.rpartition("/")
        return client.get_model_version(name, number)
    except Exception:  # noqa: BLE001
        return None
