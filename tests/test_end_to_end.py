"""End to end: a tiny config trains and leaves one complete MLflow run — on a real server over HTTP,
and through `mlflow run . --env-manager local` (the MLproject entry point)."""

import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import warm

from nfp.config import load_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _artifact_paths(client, run_id, path=None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_training_against_a_real_server_logs_a_complete_run(mlflow_server, tiny_overrides, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    from nfp.training.train import train

    secret_url = "https://alice:s3cret@data.example.com/mnist_test_seq.npy"  # unused by generate; must not leak
    cfg = load_config(
        "configs/quickstart.yaml", [*tiny_overrides, "tracking.experiment=e2e-server", f"data.url={secret_url}"]
    )
    summary = train(cfg)

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("e2e-server")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == summary["run_id"]
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.preset"] == "custom"
    assert run.data.tags["replicas"] == "1" and run.data.tags["global_batch_size"] == "4"
    assert {"tensorflow_version", "keras_version", "mlflow_version", "data_manifest_id"} <= set(run.data.tags)
    assert {"strategy", "device"} <= set(run.data.tags)

    for key in ("loss", "val_loss", "learning_rate", "epoch_time", "clips_per_sec"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key

    artifacts = _artifact_paths(client, run.info.run_id)
    for expected in (
        "config/resolved.yaml",
        "data/manifest.json",
        "data/preview.png",
        "data/preview.gif",
        "logs/history.csv",
        "plots/history.png",
        "predictions/clip.gif",
        "checkpoints/last.keras",
    ):
        assert expected in artifacts, f"{expected} not in {sorted(artifacts)}"
    resolved = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config/resolved.yaml")
    assert "https://***@data.example.com" in resolved and "s3cret" not in resolved
    for clip in (0, 1):  # MLflow files key "predictions/clip_0" as images/predictions~clip_0+step+…
        series = [p for p in artifacts if p.startswith(f"images/predictions~clip_{clip}+step+") and p.endswith(".png")]
        assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in series) == [0, 1, 2]  # 0: the untrained model

    (model_info,) = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    loaded = mlflow.pyfunc.load_model(model_info.model_uri)  # the served model: context in, the rollout out
    context = np.random.rand(1, 3, 16, 16, 1).astype(np.float32)
    assert np.asarray(loaded.predict(context)).shape == (1, 3, 16, 16, 1)  # evaluate.predict_frames by default


def test_mlflow_run_entry_point_trains_into_the_local_store(tmp_path, tiny_overrides):
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    overrides = " ".join(
        [*tiny_overrides, "train.epochs=1", "tracking.log_model=false", "tracking.experiment=e2e-project"]
    )
    # `mlflow run` and its entry point's `python -m nfp train` as forks of the warm Python (tests/warm.py)
    argv = ["-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-P", "config=configs/quickstart.yaml"]
    proc = warm.run([*argv, "-P", f"overrides={overrides}"], cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "the entry point must continue the run `mlflow run` created, not start another"
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
