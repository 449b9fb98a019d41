"""Shared test setup: quiet TF, an isolated MLflow store per test, tiny-shape config overrides."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # else each gcsfs call waits 60 s on gRPC

import pytest


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path, monkeypatch):
    """Each test tracks into its own sqlite store, never ./mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "TF_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "mlflow.db"


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """Overrides that shrink any config to seconds on a CPU: 16×16 frames, 6 per clip, 4 filters."""
    return [
        "data.source=generate",
        "data.image_size=16",
        "data.digit_size=8",
        "data.frames=6",
        "data.num_clips=24",
        "data.num_shards=2",
        f"data.dir={tmp_path}/data",
        "data.context_frames=3",
        "data.predict_frames=3",
        "model.preset=custom",
        "model.filters=[4]",
        "model.kernel_sizes=[3]",
        "train.epochs=2",
        "train.batch_size=4",
        "train.verbose=0",
        f"train.output_dir={tmp_path}/out",
        "train.images.num_clips=2",
        "evaluate.context_frames=3",
        "evaluate.predict_frames=3",
        "evaluate.batch_size=4",
    ]
