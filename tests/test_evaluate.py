"""`nfp evaluate` end to end on a tiny trained model: report files, MLflow logging, one-line errors."""

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import REQUIREMENTS, tiny_model

from nfp.errors import ConfigError, DataError, ModelError, TrackingError


@pytest.fixture
def trained(tiny_overrides, tiny_checkpoint):
    """(cfg, checkpoint path): tiny prepared data and a model fit for a few steps on it."""
    from nfp.config import load_config

    return load_config(None, tiny_overrides), tiny_checkpoint


def test_nfp_evaluate_writes_report_csv_and_plot(trained, tiny_overrides, tmp_path, capsys):
    from nfp.cli import main

    _, checkpoint = trained
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
    from nfp.inference.evaluate import run_evaluate

    cfg, checkpoint = trained
    corrupt_after_building(
        "clip_batches", lambda data_cfg, split: Path(data_cfg.dir) / f"{split}-00000-of-00001.tfrecord"
    )
    with pytest.raises(DataError, match=r"^shard .*/test-00000-of-00001.tfrecord: sha256 .* from the manifest"):
        run_evaluate(cfg, model_uri=checkpoint, out_dir=str(tmp_path / "report"))
    assert not (tmp_path / "report").exists()


def test_evaluate_logs_metrics_report_and_plot_to_a_new_run_tagged_with_the_model(trained):
    from mlflow import MlflowClient

    from nfp.inference.evaluate import run_evaluate

    cfg, checkpoint = trained
    report = run_evaluate(cfg, model_uri=checkpoint)
    client = MlflowClient()
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.tags["nfp.model_uri"] == checkpoint
    assert run.data.tags["nfp.eval.test.protocol"] == "rollout"
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_mse"] == pytest.approx(report["summary"]["test_mse"])
    assert run.data.metrics["test_baseline_mean_frame_ssim"] == pytest.approx(
        report["summary"]["test_baseline_mean_frame_ssim"]
    )
    history = client.get_metric_history(run.info.run_id, "test_mse_by_frame")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval/test")}
    assert artifacts == {"eval/test/report.json", "eval/test/per_frame.csv", "eval/test/per_frame.png"}
    assert (Path(cfg.train.output_dir) / "eval" / "report.json").is_file()  # default out_dir
    with pytest.raises(
        TrackingError, match=rf"MLflow run {'f' * 32} \(--run-id\) to log the evaluation into: not found"
    ):
        run_evaluate(cfg, model_uri=checkpoint, run_id="f" * 32)


def test_curves_longer_than_one_mlflow_batch_all_arrive(tiny_overrides):
    """2,801 metrics, past log_batch's 1,000 a request: MlflowClient splits them and none is lost."""
    from mlflow import MlflowClient

    from nfp.config import load_config
    from nfp.inference.evaluate import _log_to_mlflow

    frames = 700
    curves = {"mse": [i / frames for i in range(frames)], "ssim": [1 - i / frames for i in range(frames)]}
    report = {"split": "test", "protocol": "rollout", "model_uri": "m.keras", "summary": {"test_mse": 0.5},
              "per_frame": {"model": curves, "copy_last": curves}}  # fmt: skip
    run_id = _log_to_mlflow(load_config(None, tiny_overrides), report, {}, run_id=None, model_run=None)
    client = MlflowClient()
    assert client.get_run(run_id).data.metrics["test_mse"] == 0.5
    for name, values in [("test_mse_by_frame", curves["mse"]), ("test_ssim_by_frame", curves["ssim"]),
                         ("test_baseline_copy_last_mse_by_frame", curves["mse"]),
                         ("test_baseline_copy_last_ssim_by_frame", curves["ssim"])]:  # fmt: skip
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(i + 1, v) for i, v in enumerate(values)], name


def test_evaluate_of_a_run_logs_into_that_run_with_the_one_step_protocol(trained, tiny_overrides):
    import mlflow

    from nfp.config import load_config
    from nfp.inference.evaluate import run_evaluate

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
    from nfp.inference.evaluate import run_evaluate
    from nfp.models.convlstm.model import build_model

    cfg, checkpoint = trained
    cfg = dataclasses.replace(
        cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False)
    )  # errors come before MLflow
    wrong_size = tmp_path / "eight.keras"
    build_model(cfg.model, image_size=8).save(wrong_size)
    with pytest.raises(ModelError, match="8×8×1, the clips are 16×16×1"):
        run_evaluate(cfg, model_uri=str(wrong_size))
    long_clips = load_config(
        None,
        tiny_overrides
        + ["tracking.enabled=false", "data.frames=20", "evaluate.context_frames=10", "evaluate.predict_frames=10"],
    )
    with pytest.raises(ConfigError, match="evaluate.context_frames: got 10, expected < the clip length 6"):
        run_evaluate(long_clips, model_uri=checkpoint)
    with pytest.raises(ModelError, match="not found"):
        run_evaluate(cfg, model_uri=str(tmp_path / "missing.keras"))
    with pytest.raises(DataError, match="manifest.json: not found"):
        run_evaluate(
            dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=f"{tmp_path}/nodata")), model_uri=checkpoint
        )


def test_evaluate_of_an_empty_split_is_a_data_error(tiny_overrides, tmp_path):
    from nfp.config import load_config
    from nfp.data.prepare import prepare
    from nfp.inference.evaluate import run_evaluate

    cfg = load_config(
        None,
        tiny_overrides + ["tracking.enabled=false", "data.split.train=20", "data.split.val=4", "data.split.test=0"],
    )
    prepare(cfg.data, progress=False)
    path = tmp_path / "m.keras"
    tiny_model().save(path)
    with pytest.raises(DataError, match="split 'test' of .* has no clips"):
        run_evaluate(cfg, model_uri=str(path))


def _misfit_models():
    import keras

    def functional(outputs_of):
        x = keras.Input((None, 16, 16, 1))
        return keras.Model(x, outputs_of(x))

    return {
        "3 channels": functional(lambda x: keras.layers.Conv3D(3, 1)(x)),
        "4-D": functional(lambda x: keras.layers.Conv3D(1, 1)(x)[:, -1]),
        "other size": functional(lambda x: keras.layers.TimeDistributed(keras.layers.MaxPooling2D())(x)),
        "two outputs": functional(lambda x: [keras.layers.Conv3D(1, 1)(x), keras.layers.Conv3D(1, 1)(x)]),
    }


@pytest.mark.parametrize("kind", ["3 channels", "4-D", "other size", "two outputs"])
def test_a_model_whose_output_does_not_fit_the_clips_is_one_line_in_evaluate_and_predict(
    kind, trained, tiny_overrides, tmp_path, capsys
):
    from nfp.cli import main

    path = tmp_path / "misfit.keras"
    _misfit_models()[kind].save(path)
    for command in (["evaluate"], ["predict", "--input", "split:test:0"]):
        capsys.readouterr()
        out = tmp_path / f"out-{command[0]}"
        assert main([*command, "--model", str(path), "--out", str(out), *tiny_overrides, "tracking.enabled=false"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err, err[-2000:]
        (line,) = [x for x in err.splitlines() if x.startswith("error")]
        assert line.startswith("error: model ") and "expected" in line and "(batch, time, 16, 16, 1)" in line, line
        assert not out.exists()


def test_evaluated_logged_models_are_ranked_by_their_scores(trained, tmp_path):
    import keras
    import mlflow

    from nfp.inference.evaluate import run_evaluate

    cfg, checkpoint = trained
    trained_model = keras.saving.load_model(checkpoint)
    untrained = keras.models.clone_model(trained_model)  # the same model, fresh weights: other scores
    ids = []
    for model in (trained_model, untrained):
        with mlflow.start_run():
            ids.append(mlflow.keras.log_model(model, name="model", pip_requirements=REQUIREMENTS).model_id)
    scores = {i: run_evaluate(cfg, model_uri=f"models:/{i}")["summary"]["test_mse"] for i in ids}
    ranked = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_experiment_by_name("Default").experiment_id],
        order_by=[{"field_name": "metrics.test_mse", "ascending": True}],
        output_format="list",
    )
    assert [m.model_id for m in ranked] == sorted(ids, key=scores.get)
    for m in ranked:
        logged = {x.key: x.value for x in m.metrics}
        assert logged["test_mse"] == pytest.approx(scores[m.model_id]) and "test_ssim" in logged
    run_evaluate(cfg, model_uri=checkpoint)  # a checkpoint is no LoggedModel: its scores go to the run only

    from nfp.inference.model_source import logged_model_id

    mlflow.register_model(f"models:/{ids[1]}", "ranked")  # a registered version names its LoggedModel too
    mlflow.MlflowClient().set_registered_model_alias("ranked", "champion", "1")
    assert logged_model_id("models:/ranked/1") == logged_model_id("models:/ranked@champion") == ids[1]
    assert logged_model_id(checkpoint) is None and logged_model_id("runs:/x/model.keras") is None
