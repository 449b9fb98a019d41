"""The GPU path on the CPU: the shipped GPU configs, only their sizes shrunk and the GPU's choices forced (XLA on,
mixed bfloat16), train end to end under MirroredStrategy over 2 logical CPUs and under MultiWorkerMirroredStrategy
in two worker processes, then `nfp evaluate` and `nfp predict` run on what they wrote; the Keras cell under XLA;
and bfloat16 training stays close to float32 on the same batches."""

import keras
import mlflow
import numpy as np
import pytest
from gpu_path import GPU_CHOICES, _artifacts, _evaluate_and_predict_with_xla, _nfp, _shrunk, _shrunk_simvp, _the_run

from nfp.config import load_config

pytestmark = pytest.mark.slow


def test_the_multi_gpu_config_trains_evaluates_and_predicts_with_xla_and_bf16_on_two_devices(tmp_path):
    config = "configs/multi_gpu.yaml"
    overrides = _shrunk(tmp_path, "distribute.devices=['/cpu:0', '/cpu:1']")
    shipped = load_config(config, [])
    assert (shipped.distribute.strategy, shipped.model.preset, shipped.train.jit_compile) == (
        "mirrored", "convlstm_s", "auto",
    )  # fmt: skip
    trained = _nfp("train", config, overrides)
    assert trained["cell_xla"] >= 2  # each replica's cell compiled by XLA (training; evaluation, strips in one pass)
    assert {"free_run:xla"} <= set(trained["compiled"])  # the periodic evaluation's and the strips' rollouts

    client, run = _the_run()
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert (tags["strategy"], tags["xla"], tags["precision"]) == ("MirroredStrategy", "cell", "mixed_bfloat16")
    assert "xla_fallback" not in tags
    assert tags["replicas"] == "2" and params["model.preset"] == "convlstm_s" and tags["global_batch_size"] == "4"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert sorted(history) == [1] and all(np.isfinite(list(history.values())))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mse")] == [1]  # periodic evaluation
    artifacts = _artifacts(client, run.info.run_id)
    assert {"checkpoints/best.keras", "checkpoints/last.keras", "predictions/clip.gif"} <= artifacts
    assert any(a.startswith("images/predictions~clip_0") for a in artifacts)  # the strips' image series
    assert mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")  # the model

    out = tmp_path / "out"
    assert (out / "backup/latest.weights.h5").is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    _evaluate_and_predict_with_xla(config, overrides, out)


def test_the_multi_gpu_config_trains_a_direct_family_on_two_devices_then_evaluates_and_predicts_with_xla(tmp_path):
    config = "configs/multi_gpu.yaml"
    overrides = _shrunk_simvp(tmp_path, "distribute.devices=['/cpu:0', '/cpu:1']")
    trained = _nfp("train", config, overrides)
    assert trained["cell_xla"] == 0 and set(trained["compiled"]) == {"direct:plain"}
    client, run = _the_run()
    tags = run.data.tags
    assert (tags["strategy"], tags["xla"], tags["precision"], tags["replicas"]) == (
        "MirroredStrategy", "off", "mixed_bfloat16", "2",
    )  # fmt: skip
    assert run.data.params["model.preset"] == "tau_tiny"
    metrics = run.data.metrics
    assert np.isfinite(metrics["loss"]) and "differential_divergence" in metrics and "val_mse" in metrics
    assert {"checkpoints/best.keras", "predictions/clip.gif"} <= _artifacts(client, run.info.run_id)
    _evaluate_and_predict_with_xla(config, overrides, tmp_path / "out", rollout="direct")


def test_the_keras_cell_trains_under_xla(tiny_overrides, monkeypatch):
    """One replica: Keras compiles the whole step (the keras cell has no XLA function of its own), traced and compiled
    once: the optimizer's slots exist before the first step (a step that makes them is traced twice)."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from nfp.training.train import train

    compiled, traced = [], []
    real_fit, real_step = keras.Model.fit, TensorFlowTrainer.train_step

    def spy_fit(self, *args, **kwargs):
        compiled.append(self.jit_compile)
        return real_fit(self, *args, **kwargs)

    def spy_step(self, data):  # runs only while tf.function traces the step
        traced.append(self.name)
        return real_step(self, data)

    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    monkeypatch.setattr(TensorFlowTrainer, "train_step", spy_step)
    summary = train(load_config(None, [*tiny_overrides, "model.cell=keras", *GPU_CHOICES, "tracking.log_model=false"]))
    assert compiled == [True] and len(summary["history"]["loss"]) == 2
    assert len(traced) == 1, traced
    tags = mlflow.MlflowClient().get_run(summary["run_id"]).data.tags
    assert (tags["xla"], tags["precision"]) == ("step", "mixed_bfloat16")


BF16_TOLERANCE = 0.02  # relative, per step: bfloat16 convolutions, float32 gates, cell state and loss


@pytest.mark.parametrize("xla", ["step", "cell"])
def test_bf16_training_follows_float32_on_the_same_batches(xla):
    """20 Adam steps of the tiny nfp model from the same weights on the same batches: under mixed_bfloat16 each
    step's loss stays within BF16_TOLERANCE of float32's (the cell state stays float32: a bfloat16 state stops
    growing once its steps fall under half a unit in the last place; test_model.py shows it at 0.5)."""
    cfg = load_config(None, ["model.preset=tiny", "model.filters=[16, 16]", "data.image_size=16", "data.digit_size=8"])
    from nfp.models.convlstm.model import build_model

    rng = np.random.default_rng(0)
    clips = rng.random((20, 4, 6, 16, 16, 1), dtype=np.float32)
    losses, weights = {}, None
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = build_model(cfg.model, image_size=16, xla_cell=xla == "cell")
            model.compile(keras.optimizers.Adam(1e-3), "mse", jit_compile=xla == "step")
        finally:
            keras.mixed_precision.set_global_policy("float32")
        weights = weights or model.get_weights()
        model.set_weights(weights)
        losses[policy] = np.array([model.train_on_batch(x[:, :-1], x[:, 1:]) for x in clips])
    assert losses["float32"][-1] < losses["float32"][0]  # it learns
    relative = np.abs(losses["mixed_bfloat16"] - losses["float32"]) / losses["float32"]
    assert relative.max() < BF16_TOLERANCE, relative
