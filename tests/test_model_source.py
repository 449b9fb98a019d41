"""Model sources: a .keras checkpoint, an MLflow run id (its best checkpoint, else its logged model), runs:/ and models:/."""

import numpy as np
import pytest
from conftest import REQUIREMENTS, tiny_model

from nfp.errors import ModelError
from nfp.inference.model_source import load_model, resolve_model

SIZE = 16


def test_missing_checkpoint_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"checkpoint .*nope\.keras: not found"):
        load_model(str(tmp_path / "nope.keras"))


def test_unknown_run_id_is_a_model_error():
    with pytest.raises(ModelError, match="MLflow run 0123456789abcdef0123456789abcdef: not found"):
        load_model("0123456789abcdef0123456789abcdef")


def test_model_loads_from_checkpoint_run_id_and_models_uri(tmp_path, monkeypatch):
    import tempfile

    import mlflow

    downloads = tmp_path / "tmp"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))  # where a run's checkpoint is downloaded to load

    model = tiny_model()
    path = tmp_path / "best.keras"
    model.save(path)
    x = np.random.default_rng(0).random((1, 2, SIZE, SIZE, 1)).astype(np.float32)
    expected = model(x).numpy()
    np.testing.assert_allclose(load_model(str(path))(x).numpy(), expected, atol=1e-6)

    with mlflow.start_run() as run:  # a run with a logged model and a best checkpoint: the best wins
        info = mlflow.keras.log_model(model, name="model", pip_requirements=REQUIREMENTS)
        mlflow.log_artifact(str(path), "checkpoints")
    loaded, source_run, source = resolve_model(run.info.run_id)
    assert (source_run, source) == (run.info.run_id, f"runs:/{run.info.run_id}/checkpoints/best.keras")
    np.testing.assert_allclose(loaded(x).numpy(), expected, atol=1e-6)
    assert not list(downloads.glob("nfp-model-*"))  # the downloaded checkpoint is gone once loaded

    loaded, source_run, _ = resolve_model(f"models:/{info.model_id}")
    assert source_run == run.info.run_id  # the lineage of a models:/ URI
    np.testing.assert_allclose(loaded(x).numpy(), expected, atol=1e-6)

    with mlflow.start_run() as run:  # only a logged model
        mlflow.keras.log_model(model, name="model", pip_requirements=REQUIREMENTS)
    _, source_run, source = resolve_model(run.info.run_id)
    assert source_run == run.info.run_id and source.startswith("models:/m-")

    with mlflow.start_run() as run:  # nothing to load
        pass
    with pytest.raises(ModelError, match="has no .keras checkpoint artifact and no logged model"):
        load_model(run.info.run_id)


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "0 bytes"),  # 0-byte
        (b"PK\x03\x04 the first bytes of a zip, then nothing", "bytes"),  # truncated
        (b"not a model at all\n", "19 bytes"),  # another format
    ],
)
def test_a_keras_file_that_is_not_a_model_is_named_as_such_not_as_not_found(content, what, tmp_path):
    path = tmp_path / "m.keras"
    path.write_bytes(content)
    with pytest.raises(ModelError) as caught:
        load_model(str(path))
    message = str(caught.value)
    assert message.startswith(f"checkpoint {path}: not a Keras model file (") and what in message
    assert "truncated, or another format" in message and "not found" not in message.lower()


def test_a_run_artifact_that_is_not_a_model_is_named_by_its_run_not_by_the_download(tmp_path):
    import mlflow

    bad = tmp_path / "best.keras"
    bad.write_bytes(b"not a model at all\n")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(bad), "checkpoints")
    uri = f"runs:/{run.info.run_id}/checkpoints/best.keras"
    with pytest.raises(ModelError, match=rf"^checkpoint {uri}: not a Keras model file \(19 bytes; "):
        load_model(uri)


def test_a_truncated_real_checkpoint_is_named_as_such(tmp_path):
    from nfp.config import load_config
    from nfp.models.convlstm.model import build_model

    good = tmp_path / "good.keras"
    build_model(
        load_config(None, ["model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]"]).model, image_size=16
    ).save(good)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"not a Keras model file \(.* bytes; .*\): truncated, or another format$"):
        load_model(str(bad))


@pytest.mark.parametrize("uri", ["", "  "])
def test_an_empty_model_flag_says_so(uri):
    with pytest.raises(ModelError, match=r"^--model: empty, expected a .keras checkpoint path, an MLflow run id"):
        load_model(uri)
