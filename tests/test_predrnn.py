"""The PredRNN family (PredRNN-V2): OpenSTL's sizes, its reverse scheduled sampling and decoupling loss, causality,
and a tiny PredRNN-V2 through everything a model goes through — training, evaluation, prediction, serving, resume
with the sampling schedule carried on, colour and rectangular frames. (1 and 2 replicas, the FLOP count:
tests/test_families.py; XLA and bfloat16 on one and two workers: tests/test_gpu_path_nodes.py.)"""

import json

import keras
import mlflow
import numpy as np
import pytest

from nfp import models
from nfp.cli import main
from nfp.config import load_config
from nfp.errors import ConfigError
from nfp.models.predrnn.cost import reverse_sampling_probabilities

TINY = ["model.preset=predrnn_v2_tiny", "model.filters=[4, 4]", "model.kernel_sizes=[3, 3]"]


def _predrnn(tiny_overrides, *extra) -> list[str]:
    return [*(o for o in tiny_overrides if not o.startswith("model.")), *TINY, *extra]


def _tiny_model(*overrides, context=3):
    cfg = load_config(None, [*TINY, "data.image_size=16", "data.digit_size=8", *overrides])
    keras.utils.set_random_seed(0)
    return models.build_model(cfg.model, frame_shape=(16, 16, 1), sampling_from=context)


def test_the_predrnn_v2_preset_has_openstls_sizes_and_recipe():
    """OpenSTL's Moving MNIST PredRNN-V2: 23.9M parameters (23,855,104 counted layer by layer from its code, and the
    sampling step counter Keras counts), 116.6 GFLOPs over its 19 steps (multiply-adds), Adam 5e-4, OneCycle."""
    cfg = load_config(None, ["model.preset=predrnn_v2", "data.image_size=64"])
    model = models.build_model(cfg.model, frame_shape=(64, 64, 1))
    assert model.count_params() == pytest.approx(23.9e6, rel=0.02)
    assert model.count_params() == 23_855_104 + 1
    counted = models.flops_per_clip(cfg.model, frame_shape=(64, 64, 1), input_frames=19, output_frames=19)
    assert counted["params"] == model.count_params()
    assert counted["forward"] / 2 == pytest.approx(116.6e9, rel=0.01)
    t = cfg.train
    assert (t.optimizer, t.learning_rate, t.schedule.name, t.batch_size, t.loss) == (
        "adam",
        5e-4,
        "onecycle",
        16,
        "mse",
    )
    assert (cfg.model.decouple_beta, cfg.model.reverse_sampling, cfg.model.reverse_sampling_alpha) == (
        0.1, [25000, 50000], 5000.0,
    )  # fmt: skip


def test_reverse_sampling_follows_openstls_schedule():
    """The probabilities (OpenSTL's reserve_schedule_sampling_exp), and the layer's draws at four training steps:
    context steps' true-frame rate r_eta, predicted steps' eta, step 0 always the true frame."""
    assert reverse_sampling_probabilities(0, 25000, 50000, 5000) == (0.5, 0.5)
    r_eta, eta = reverse_sampling_probabilities(30000, 25000, 50000, 5000)
    assert r_eta == pytest.approx(1 - 0.5 * np.exp(-1)) and eta == pytest.approx(0.4)
    assert reverse_sampling_probabilities(50000, 25000, 50000, 5000) == (1.0, 0.0)
    stack = _tiny_model("model.reverse_sampling=[100, 200]", "model.reverse_sampling_alpha=20").get_layer("predrnn_v2")
    for step in (0, 120, 150, 250):
        stack.sampling_step.assign(step)
        truth = np.asarray(stack._reverse_sampling(4000, 6))  # context 3: steps 1, 2 context, 3..5 predicted
        r_eta, eta = reverse_sampling_probabilities(step, 100, 200, 20)
        assert truth[:, 0].all()
        assert truth[:, 1:3].mean() == pytest.approx(r_eta, abs=0.02), step
        assert truth[:, 3:].mean() == pytest.approx(eta, abs=0.02), step


def test_the_decoupling_loss_is_added_with_its_weight_and_reported():
    """One training step from the same weights on the same batch with β 0.1 and β 0: the losses differ by 0.1 × the
    `decoupling` metric (the mean |cosine| of the adapted increments, between 0 and 1)."""
    x = np.random.default_rng(0).random((4, 6, 16, 16, 1), dtype=np.float32)
    losses = {}
    for beta in (0.1, 0.0):
        model = _tiny_model(f"model.decouple_beta={beta}", "model.reverse_sampling=[0, 1]")
        model.get_layer("predrnn_v2").sampling_step.assign(10)  # past the schedule: a fixed mask, the same inputs
        model.compile(keras.optimizers.SGD(0.0), "mse")
        losses[beta] = model.train_on_batch(x[:, :-1], x[:, 1:], return_dict=True)
    with_term, without = losses[0.1], losses[0.0]
    assert 0 < with_term["decoupling"] < 1 and with_term["decoupling"] == pytest.approx(without["decoupling"])
    assert with_term["loss"] - without["loss"] == pytest.approx(0.1 * with_term["decoupling"], rel=1e-4)


def test_output_t_sees_inputs_up_to_t_only_and_a_rollout_is_one_free_pass():
    model = _tiny_model()
    x = np.random.default_rng(1).random((2, 6, 16, 16, 1), dtype=np.float32)
    changed = x.copy()
    changed[:, 3] += 0.5
    before, after = np.asarray(model(x)), np.asarray(model(changed))
    np.testing.assert_allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert np.abs(before[:, 3:] - after[:, 3:]).max() > 1e-4
    rolled = models.rollout(model, x[:, :3], 4)
    frames = x[:, :3]  # one frame at a time, each prediction fed back: the same frames
    for _ in range(4):
        frames = np.concatenate([frames, np.asarray(model(frames))[:, -1:]], axis=1)
    np.testing.assert_allclose(rolled, frames[:, 3:], atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.filters=[8, 4]"], "model.filters: got [8, 4], expected one hidden size for every layer"),
        (["model.kernel_sizes=[3]"], "model.kernel_sizes: got 1 sizes for 2 layers"),
        (["model.reverse_sampling=[50, 10]"], "model.reverse_sampling: got [50, 10], expected [start, end]"),
        (["train.scheduled_sampling=100"], "expected 0 with model.family predrnn (PredRNN-V2 trains with its own"),
        (["model.width=8"], "model.width: does not apply to model.family predrnn"),
    ],
)
def test_what_predrnn_cannot_take_is_one_line(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.preset=predrnn_v2_tiny", *overrides])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_quickstart_takes_each_predrnn_preset_with_one_override():
    for preset in ("predrnn_v2_tiny", "predrnn_v2"):
        cfg = load_config("configs/quickstart.yaml", [f"model.preset={preset}"])
        assert (cfg.model.family, cfg.data.protocol) == ("predrnn", "shift")
        model = models.build_model(cfg.model, frame_shape=cfg.data.frame_shape)
        assert tuple(model.outputs[0].shape) == (None, None, 32, 32, 1)


@pytest.mark.slow
def test_predrnn_trains_on_colour_rectangles_evaluates_predicts_serves_and_resumes_its_schedule(
    tiny_overrides, tmp_path
):
    overrides = _predrnn(tiny_overrides, "data.frame_size=[16, 24]", "data.channels=3", "data.background=photos",
                         "train.batch_size=4", "evaluate.every_n_epochs=1")  # fmt: skip
    assert main(["train", *overrides]) == 0
    out = tmp_path / "out"
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "decoupling", "val_decoupling", "val_mse"} <= set(header)
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["decoupling"] > 0
    assert (run.data.params["model.preset"], run.data.tags["model_family"]) == ("predrnn_v2_tiny", "predrnn")
    last = str(out / "checkpoints/last.keras")
    models.register_layers()
    model = keras.saving.load_model(last, compile=False)
    steps = int(model.get_layer("predrnn_v2").sampling_step.numpy())
    assert tuple(model.outputs[0].shape) == (None, None, 16, 24, 3) and steps > 0

    assert main(["evaluate", *overrides, "--model", last, "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e/report.json").read_text())
    assert report["predict_frames"] == 3 and np.isfinite(report["scores"]["model"]["mse"])
    assert main(["predict", *overrides, "--model", last, "--input", "split:val:1", "--horizon", "7",
                 "--out", str(tmp_path / "p")]) == 0  # fmt: skip
    assert sorted(p.suffix for p in (tmp_path / "p").iterdir()) == [".gif", ".json", ".png"]

    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    served = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    context = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 24, 3)).astype(np.uint8)
    for horizon in (1, 8):
        assert served.predict(context, params={"horizon": horizon}).shape == (2, horizon, 16, 24, 3)

    assert main(["train", *overrides, "train.epochs=3"]) == 0  # resumes after epoch 2, into the same run
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 3
    resumed = keras.saving.load_model(last, compile=False).get_layer("predrnn_v2")
    assert int(resumed.sampling_step.numpy()) == steps * 3 // 2  # the schedule went on from where it was


def test_training_feeds_back_what_the_schedule_draws():
    """Past the schedule's end (r_eta 1, eta 0) a training call feeds the true context frames and then its own
    predictions: the free-running pass from step k; before its start, some inputs of the context are predictions."""
    from nfp.models.predrnn.layers import free_run

    model = _tiny_model("model.reverse_sampling=[100, 200]")
    stack = model.get_layer("predrnn_v2")
    x = np.random.default_rng(2).random((8, 6, 16, 16, 1), dtype=np.float32)
    stack.sampling_step.assign(10**6)
    trained = np.asarray(model(x, training=True))
    np.testing.assert_allclose(trained, np.asarray(free_run(model, x, 3)), atol=1e-5)
    assert np.abs(trained - np.asarray(model(x))).max() > 1e-4  # not the teacher-forced pass
