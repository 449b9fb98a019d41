"""Protocols, baselines and errors of evaluation; `run_evaluate` end to end on a tiny trained model."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from nfp.errors import ConfigError, DataError, ModelError, TrackingError
from nfp.evaluate import evaluate_model, flat_metrics, load_model
from nfp.model import rollout  # the rollout evaluation and predict use

SIZE = 16


def tiny_model(size=SIZE):
    """A causal ConvLSTM (the head's temporal kernel is 1), 4 filters."""
    import keras

    return keras.Sequential(
        [
            keras.Input((None, size, size, 1)),
            keras.layers.ConvLSTM2D(4, 3, padding="same", return_sequences=True),
            keras.layers.Conv3D(1, (1, 3, 3), padding="same", activation="sigmoid"),
        ]
    )


def clips_ds(clips, batch=2):
    return tf.data.Dataset.from_tensor_slices(np.asarray(clips, np.uint8)).batch(batch)


def whole_frames(*levels, size=8):
    """One clip (time, size, size) uint8 whose frame t is uniformly levels[t]."""
    return np.stack([np.full((size, size), v, np.uint8) for v in levels])


def affine(x, training=False):
    """A pointwise stand-in model: output t = 0.5·input t + 0.1 (causal by construction)."""
    return 0.5 * x + 0.1


# --------------------------------------------------------------------------- rollout
def test_rollout_feeds_each_prediction_back_as_the_next_input():
    context = tf.fill((1, 3, 8, 8, 1), 0.6)
    predicted = np.asarray(rollout(affine, context, 3))[0, :, 0, 0, 0]
    np.testing.assert_allclose(predicted, [0.4, 0.3, 0.25], rtol=1e-6)  # 0.5·0.6+0.1, then f(0.4), f(0.3)


def test_rollout_shape_is_batch_steps_frame():
    model = tiny_model()
    out = rollout(model, tf.zeros((2, 3, SIZE, SIZE, 1)), 4)
    assert out.shape == (2, 4, SIZE, SIZE, 1)


def test_rollout_never_sees_ground_truth_after_the_context():
    model = tiny_model()
    rng = np.random.default_rng(0)
    clip = rng.random((1, 6, SIZE, SIZE, 1)).astype(np.float32)
    other_future = clip.copy()
    other_future[:, 3:] = rng.random((1, 3, SIZE, SIZE, 1))
    a = rollout(model, clip[:, :3], 3)
    b = rollout(model, other_future[:, :3], 3)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- baselines
def test_static_clip_copy_last_frame_scores_zero_mse():
    clip = np.repeat(np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE), dtype=np.uint8), 6, axis=0)
    result = evaluate_model(tiny_model(), clips_ds([clip]), protocol="rollout", context_frames=3, predict_frames=3)
    assert result["scores"]["copy_last"]["mse"] == 0.0
    assert result["scores"]["copy_last"]["mae"] == 0.0
    assert result["scores"]["copy_last"]["ssim"] == pytest.approx(1.0)
    assert result["scores"]["mean_frame"]["mse"] == pytest.approx(0.0, abs=1e-9)  # float mean of equal frames


def test_rollout_baselines_score_as_hand_computed():
    # context black, white; truth white, black (8×8 = 64 pixels)
    result = evaluate_model(affine, clips_ds([whole_frames(0, 255, 255, 0)]), protocol="rollout", context_frames=2, predict_frames=2)
    per_frame = result["per_frame"]
    assert per_frame["copy_last"]["mse"] == pytest.approx([0, 64])  # predicts white, white
    assert per_frame["mean_frame"]["mse"] == pytest.approx([16, 16])  # predicts grey 0.5 twice
    assert per_frame["mean_frame"]["mae"] == pytest.approx([32, 32])
    # the model (affine) predicts 0.6, then 0.4: errors 0.4 and 0.4
    assert per_frame["model"]["mse"] == pytest.approx([64 * 0.16, 64 * 0.16], rel=1e-5)
    assert result["scores"]["copy_last"]["mse"] == pytest.approx(32)


def test_one_step_is_teacher_forced_shift_and_baselines_use_frames_seen_so_far():
    result = evaluate_model(affine, clips_ds([whole_frames(0, 255, 255)]), protocol="one_step", context_frames=1, predict_frames=1)
    assert result["protocol"] == "one_step"
    assert result["frames"] == [1, 2]
    per_frame = result["per_frame"]
    assert per_frame["copy_last"]["mse"] == pytest.approx([64, 0])  # inputs black, white → targets white, white
    assert per_frame["mean_frame"]["mse"] == pytest.approx([64, 16])  # running means 0, 0.5
    # the model sees the TRUE frames: outputs 0.1 and 0.6 (not a rollout)
    assert per_frame["model"]["mse"] == pytest.approx([64 * 0.81, 64 * 0.16], rel=1e-5)


def test_flat_metrics_prefix_the_split_and_name_the_baselines():
    result = evaluate_model(affine, clips_ds([whole_frames(0, 255, 255, 0)]), protocol="rollout", context_frames=2, predict_frames=2)
    flat = flat_metrics(result, "test")
    assert flat["test_mse"] == result["scores"]["model"]["mse"]
    assert flat["test_baseline_copy_last_mse"] == pytest.approx(32)
    assert {"test_ssim", "test_psnr", "test_mae", "test_baseline_mean_frame_ssim"} <= set(flat)
    assert len(flat) == 12


# --------------------------------------------------------------------------- errors
def test_model_frame_size_incompatible_with_clips_is_a_model_error():
    with pytest.raises(ModelError, match="16×16×1.*8×8×1"):
        evaluate_model(tiny_model(), clips_ds([whole_frames(0, 0, 0, 0)]), protocol="rollout", context_frames=2, predict_frames=2)


def test_context_not_shorter_than_the_clips_is_a_config_error():
    with pytest.raises(ConfigError, match="evaluate.context_frames: got 4, expected < the clip length 4"):
        evaluate_model(affine, clips_ds([whole_frames(0, 0, 0, 0)]), protocol="rollout", context_frames=4, predict_frames=1)


def test_empty_dataset_is_a_data_error():
    empty = clips_ds(np.zeros((0, 4, 8, 8)))
    with pytest.raises(DataError, match="empty"):
        evaluate_model(affine, empty, protocol="rollout", context_frames=2, predict_frames=2)


def test_missing_checkpoint_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"checkpoint .*nope\.keras: not found"):
        load_model(str(tmp_path / "nope.keras"))


def test_unknown_run_id_is_a_model_error():
    with pytest.raises(ModelError, match="MLflow run 0123456789abcdef0123456789abcdef: not found"):
        load_model("0123456789abcdef0123456789abcdef")


# --------------------------------------------------------------------------- model sources
def test_model_loads_from_checkpoint_run_id_and_models_uri(tmp_path):
    import mlflow

    from nfp.evaluate import resolve_model

    model = tiny_model()
    path = tmp_path / "best.keras"
    model.save(path)
    x = np.random.default_rng(0).random((1, 2, SIZE, SIZE, 1)).astype(np.float32)
    expected = model(x).numpy()
    np.testing.assert_allclose(load_model(str(path))(x).numpy(), expected, atol=1e-6)

    with mlflow.start_run() as run:  # a run with a logged model and a best checkpoint: the best wins
        info = mlflow.keras.log_model(model, name="model")
        mlflow.log_artifact(str(path), "checkpoints")
    loaded, source_run, source = resolve_model(run.info.run_id)
    assert (source_run, source) == (run.info.run_id, f"runs:/{run.info.run_id}/checkpoints/best.keras")
    np.testing.assert_allclose(loaded(x).numpy(), expected, atol=1e-6)

    loaded, source_run, _ = resolve_model(f"models:/{info.model_id}")
    assert source_run == run.info.run_id  # the lineage of a models:/ URI
    np.testing.assert_allclose(loaded(x).numpy(), expected, atol=1e-6)

    with mlflow.start_run() as run:  # only a logged model
        mlflow.keras.log_model(model, name="model")
    _, source_run, source = resolve_model(run.info.run_id)
    assert source_run == run.info.run_id and source.startswith("models:/m-")

    with mlflow.start_run() as run:  # nothing to load
        pass
    with pytest.raises(ModelError, match="has no .keras checkpoint artifact and no logged model"):
        load_model(run.info.run_id)


# --------------------------------------------------------------------------- run_evaluate end to end
@pytest.fixture
def trained(tiny_overrides, tiny_checkpoint):
    """(cfg, checkpoint path): tiny prepared data and a model fit for a few steps on it."""
    from nfp.config import load_config

    return load_config(None, tiny_overrides), tiny_checkpoint


def test_nfp_evaluate_writes_report_csv_and_plot(trained, tiny_overrides, tmp_path, capsys):
    from nfp.cli import main

    cfg, checkpoint = trained
    out = tmp_path / "report"
    assert main(["evaluate", "--model", checkpoint, "--out", str(out), *tiny_overrides]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["protocol"] == "rollout" and summary["split"] == "test"
    report = json.loads((out / "report.json").read_text())
    assert report["summary"] == summary
    assert report["frames"] == [3, 4, 5] and report["clips"] == summary["clips"] > 0
    assert 0 < summary["test_ssim"] <= 1 and summary["test_mse"] > 0 and "test_baseline_copy_last_mse" in summary
    rows = (out / "per_frame.csv").read_text().strip().splitlines()
    assert rows[0].startswith("frame,step,model_mse,model_mae,model_ssim,model_psnr,copy_last_mse")
    assert len(rows) == 1 + 3
    assert (out / "per_frame.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["per_frame.csv", "per_frame.png", "report.json"]  # no temp files


def test_a_shard_corrupted_behind_the_check_is_named_and_nothing_is_written(trained, tmp_path, corrupt_after_building):
    from nfp.evaluate import run_evaluate

    cfg, checkpoint = trained
    corrupt_after_building("clip_batches", lambda data_cfg, split: Path(data_cfg.dir) / f"{split}-00000-of-00001.tfrecord")
    with pytest.raises(DataError, match=r"^shard .*/test-00000-of-00001.tfrecord: sha256 .* from the manifest"):
        run_evaluate(cfg, model_uri=checkpoint, out_dir=str(tmp_path / "report"))
    assert not (tmp_path / "report").exists()


def test_evaluate_logs_metrics_report_and_plot_to_a_new_run_tagged_with_the_model(trained):
    from mlflow import MlflowClient

    from nfp.evaluate import run_evaluate

    cfg, checkpoint = trained
    report = run_evaluate(cfg, model_uri=checkpoint)
    client = MlflowClient()
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.tags["nfp.model_uri"] == checkpoint
    assert run.data.tags["nfp.eval.test.protocol"] == "rollout"
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_mse"] == pytest.approx(report["summary"]["test_mse"])
    assert run.data.metrics["test_baseline_mean_frame_ssim"] == pytest.approx(report["summary"]["test_baseline_mean_frame_ssim"])
    history = client.get_metric_history(run.info.run_id, "test_mse_by_frame")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval/test")}
    assert artifacts == {"eval/test/report.json", "eval/test/per_frame.csv", "eval/test/per_frame.png"}
    assert (Path(cfg.train.output_dir) / "eval" / "report.json").is_file()  # default out_dir
    with pytest.raises(TrackingError, match=f"MLflow run {'f' * 32} to log the evaluation into: not found"):
        run_evaluate(cfg, model_uri=checkpoint, run_id="f" * 32)


def test_evaluate_of_a_run_logs_into_that_run_with_the_one_step_protocol(trained, tiny_overrides):
    import mlflow

    from nfp.config import load_config
    from nfp.evaluate import run_evaluate

    _, checkpoint = trained
    with mlflow.start_run() as run:
        mlflow.log_artifact(checkpoint, "checkpoints")
    cfg = load_config(None, tiny_overrides + ["evaluate.protocol=one_step"])
    report = run_evaluate(cfg, model_uri=run.info.run_id, split="val")
    assert report["mlflow_run_id"] == run.info.run_id
    assert report["protocol"] == "one_step" and report["frames"] == [1, 2, 3, 4, 5]
    metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert metrics["val_mse"] == pytest.approx(report["summary"]["val_mse"])
    assert "val_baseline_copy_last_psnr" in metrics


def test_evaluate_errors_are_one_line(trained, tiny_overrides, tmp_path):
    from nfp.config import load_config
    from nfp.evaluate import run_evaluate
    from nfp.model import build_model

    cfg, checkpoint = trained
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))  # errors come before MLflow
    wrong_size = tmp_path / "eight.keras"
    build_model(cfg.model, image_size=8).save(wrong_size)
    with pytest.raises(ModelError, match="8×8×1, the clips are 16×16×1"):
        run_evaluate(cfg, model_uri=str(wrong_size))
    long_clips = load_config(None, tiny_overrides + ["tracking.enabled=false", "data.frames=20", "evaluate.context_frames=10", "evaluate.predict_frames=10"])
    with pytest.raises(ConfigError, match="evaluate.context_frames: got 10, expected < the clip length 6"):
        run_evaluate(long_clips, model_uri=checkpoint)
    with pytest.raises(ModelError, match="not found"):
        run_evaluate(cfg, model_uri=str(tmp_path / "missing.keras"))
    with pytest.raises(DataError, match="manifest.json: not found"):
        run_evaluate(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=f"{tmp_path}/nodata")), model_uri=checkpoint)


def test_evaluate_of_an_empty_split_is_a_data_error(tiny_overrides, tmp_path):
    from nfp.config import load_config
    from nfp.data.prepare import prepare
    from nfp.evaluate import run_evaluate

    cfg = load_config(None, tiny_overrides + ["tracking.enabled=false", "data.split.train=20", "data.split.val=4", "data.split.test=0"])
    prepare(cfg.data, progress=False)
    path = tmp_path / "m.keras"
    tiny_model().save(path)
    with pytest.raises(DataError, match="split 'test' of .* has no clips"):
        run_evaluate(cfg, model_uri=str(path))
