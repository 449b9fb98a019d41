"""The PredFormer family (Quadruplet-TSST): the paper's sizes, its layers' contracts, and a tiny PredFormer through
everything a model goes through — training with PredFormer's recipe, evaluation, prediction, serving past its block,
resume, colour and rectangular frames — and the memory a step needs refused before training where it cannot fit.
(1 and 2 replicas, the FLOP count: tests/test_families.py; XLA and bfloat16 on one and two workers:
tests/test_gpu_path_nodes.py.)"""

import json

import keras
import mlflow
import numpy as np
import pytest

from nfp import models
from nfp.cli import main
from nfp.config import load_config
from nfp.errors import ConfigError

TINY = ["model.preset=predformer_tiny", "model.width=16", "model.heads=2", "model.blocks=1"]


def _predformer(tiny_overrides, *extra) -> list[str]:
    """tiny_overrides with a tiny PredFormer in place of its custom ConvLSTM (3 frames in, 3 out, 16×16)."""
    return [*(o for o in tiny_overrides if not o.startswith("model.")), *TINY, *extra]


def test_the_predformer_preset_has_the_papers_parameter_count_and_recipe():
    """PredFormer's Moving MNIST model: 25.3M parameters at 64×64×1, patch 8, width 256, 6 blocks (its paper's table;
    25,297,728 counted layer by layer from its code); AdamW at 1e-3 with weight decay 1e-2, OneCycle, batch 16."""
    cfg = load_config(None, ["model.preset=predformer", "data.image_size=64"])
    model = models.build_model(cfg.model, frame_shape=(64, 64, 1), context_frames=10, predict_frames=10)
    assert model.count_params() == pytest.approx(25.3e6, rel=0.02)
    assert model.count_params() == 25_297_728 and not model.non_trainable_weights  # the positions are a constant
    counted = models.flops_per_clip(cfg.model, frame_shape=(64, 64, 1), input_frames=10, output_frames=10)
    assert counted["params"] == model.count_params()
    assert counted["forward"] / 2 == pytest.approx(16.5e9, rel=0.02)  # its paper's 16.5 GFLOPs count multiply-adds
    t = cfg.train
    assert (t.optimizer, t.learning_rate, t.weight_decay, t.schedule.name, t.batch_size, t.loss) == (
        "adamw", 1e-3, 1e-2, "onecycle", 16, "mse",
    )  # fmt: skip


def test_the_weight_decay_reaches_the_optimizer():
    from nfp.models.optim import build_optimizer

    def decay(*overrides):
        return build_optimizer(load_config(None, list(overrides)).train, 1, 10).weight_decay

    assert decay("model.preset=predformer_tiny") == 1e-2  # PredFormer's recipe
    assert decay("model.preset=predformer_tiny", "train.weight_decay=0.1") == 0.1
    assert decay("train.optimizer=adam") is None and decay("train.optimizer=adamw") == 0.004  # Keras's default
    assert decay("train.optimizer=adam", "train.weight_decay=0.05") == 0.05


def test_patches_and_positions_are_predformers():
    from nfp.models.convlstm.layers import DepthToSpace, SpaceToDepth
    from nfp.models.predformer.layers import AddPositions, sinusoid

    x = np.random.default_rng(0).random((2, 3, 8, 12, 2), dtype=np.float32)
    patches = np.asarray(SpaceToDepth(4)(x)).reshape(2, 3, 6, 32)  # as the model's to_patches and tokens layers
    assert patches.shape == (2, 3, 6, 32)  # (8/4)·(12/4) patches of 4·4·2 values
    # patch n = row · (W/p) + column; inside it (p1, p2, c), as einops' 'b t (h p1) (w p2) c -> b t (h w) (p1 p2 c)'
    np.testing.assert_array_equal(patches[1, 2, 4], x[1, 2, 4:8, 4:8, :].reshape(-1))
    np.testing.assert_array_equal(np.asarray(DepthToSpace(4)(patches.reshape(2, 3, 2, 3, 32))), x)
    table = sinusoid(640, 256)  # PredFormer's sinusoidal_embedding(10 * 64, 256)
    p, i = 77, 10
    assert table[p, i] == pytest.approx(np.sin(p / 10000 ** (i / 256)), abs=1e-6)
    assert table[p, i + 1] == pytest.approx(np.cos(p / 10000 ** (i / 256)), abs=1e-6)
    tokens = np.zeros((1, 10, 64, 256), np.float32)
    np.testing.assert_allclose(np.asarray(AddPositions()(tokens))[0], table.reshape(10, 64, 256), atol=1e-6)


@pytest.mark.parametrize(("attends", "changed"), [("time", "the patch in every frame"), ("space", "the frame")])
def test_a_gated_transformer_attends_over_time_or_space_only(attends, changed):
    """A change to one token (frame 0, patch 0) reaches, through one layer, the same patch in every frame (time) or
    every patch of the same frame (space), and nothing else."""
    from nfp.models.predformer.layers import GatedTransformer

    keras.utils.set_random_seed(0)
    layer = GatedTransformer(attends, width=8, heads=2, hidden=16)
    x = np.random.default_rng(0).random((1, 3, 4, 8), dtype=np.float32)
    moved = x.copy()
    moved[0, 0, 0] += np.linspace(-1, 1, 8, dtype=np.float32)  # not a constant: LayerNorm would take that away
    differs = np.abs(np.asarray(layer(moved)) - np.asarray(layer(x))).max(axis=-1)[0] > 1e-6  # (frames, patches)
    expected = np.zeros((3, 4), bool)
    if attends == "time":
        expected[:, 0] = True
    else:
        expected[0, :] = True
    np.testing.assert_array_equal(differs, expected, err_msg=changed)


def test_quickstart_takes_each_predformer_preset_with_one_override():
    for preset in ("predformer_tiny", "predformer"):
        cfg = load_config("configs/quickstart.yaml", [f"model.preset={preset}"])
        assert (cfg.model.family, cfg.data.protocol, cfg.data.context_frames) == ("predformer", "context", 10)
        model = models.build_model(cfg.model, frame_shape=cfg.data.frame_shape, context_frames=10, predict_frames=10)
        assert tuple(model.outputs[0].shape) == (None, 10, 32, 32, 1)


@pytest.mark.slow
def test_predformer_trains_on_colour_rectangles_evaluates_predicts_serves_past_its_block_and_resumes(
    tiny_overrides, tmp_path
):
    overrides = _predformer(tiny_overrides, "data.frame_size=[16, 24]", "data.channels=3", "data.background=photos",
                            "train.batch_size=4", "evaluate.every_n_epochs=1")  # fmt: skip
    assert main(["train", *overrides]) == 0
    out = tmp_path / "out"
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "val_loss", "val_mse"} <= set(header)
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert (run.data.params["model.preset"], run.data.tags["model_family"]) == ("predformer_tiny", "predformer")
    best = str(out / "checkpoints/best.keras")
    model = models.register_layers() or keras.saving.load_model(best, compile=False)
    assert tuple(model.outputs[0].shape) == (None, 3, 16, 24, 3) and models.of_model(model).__name__.endswith("former")

    assert main(["evaluate", *overrides, "--model", best, "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e/report.json").read_text())
    assert report["predict_frames"] == 3 and np.isfinite(report["scores"]["model"]["mse"])
    assert main(["predict", *overrides, "--model", best, "--input", "split:val:1", "--horizon", "7",
                 "--out", str(tmp_path / "p")]) == 0  # fmt: skip
    assert sorted(p.suffix for p in (tmp_path / "p").iterdir()) == [".gif", ".json", ".png"]

    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    served = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    context = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 24, 3)).astype(np.uint8)
    for horizon in (1, 3, 8):  # shorter than its block of 3, the block, past it
        predicted = served.predict(context, params={"horizon": horizon})
        assert predicted.shape == (2, horizon, 16, 24, 3) and 0 <= predicted.min() <= predicted.max() <= 1

    assert main(["train", *overrides, "train.epochs=3"]) == 0  # resumes after epoch 2, into the same run
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 3
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3


def test_a_batch_whose_attention_cannot_fit_the_device_is_refused_before_training(tiny_overrides, monkeypatch):
    """The estimate (nfp.models.predformer.cost) against the device's memory, here a 64 kB machine: one line naming
    train.batch_size and model.patch_size, before the output dir is made."""
    overrides = _predformer(tiny_overrides, "tracking.enabled=false")
    cfg = load_config(None, overrides)
    per_clip, _, _ = models.step_memory(
        cfg.model, frame_shape=(16, 16, 1), input_frames=3, output_frames=3, value_bytes=4
    )
    assert per_clip > 0
    from nfp.distribute import devices

    monkeypatch.setattr(devices.Device, "memory_bytes", property(lambda device: 64_000))
    with pytest.raises(ConfigError) as info:
        from nfp.training.train import train

        train(cfg)
    message = str(info.value)
    assert message.startswith(f"train.batch_size: {cfg.train.batch_size} clips of 3×16×16×1 per device need about")
    assert "the CPU has 64.0 kB; lower train.batch_size or raise model.patch_size (now 4" in message
    assert "\n" not in message
    assert not (tmp := __import__("pathlib").Path(cfg.train.output_dir)).exists(), tmp


def test_the_attention_memory_grows_with_the_fourth_power_of_one_over_the_patch():
    cfg = load_config("configs/videos.yaml", ["model.preset=predformer"])

    def per_clip(patch):
        m = load_config("configs/videos.yaml", ["model.preset=predformer", f"model.patch_size={patch}"]).model
        return models.step_memory(m, frame_shape=(128, 128, 3), input_frames=10, output_frames=10, value_bytes=2)[0]

    assert cfg.model.patch_size == 8
    assert 4 < per_clip(4) / per_clip(8) < 16  # the spatial attention's share 16×, the other activations' 4×
    from nfp.distribute import devices

    h100 = devices.Device("GPU", "NVIDIA H100 80GB HBM3", (9, 0))
    assert h100.memory_bytes == 80 * 2**30 and devices.Device("GPU", "NVIDIA L4").memory_bytes == 24 * 2**30
    choices = devices.choose(cfg.train, cfg.model, [h100], replicated=False)
    fits = load_config("configs/videos.yaml", ["model.preset=predformer", "train.batch_size=16"])
    devices.check_step_fits(fits.train, fits.model, choices, frame_shape=(128, 128, 3), input_frames=10,
                            output_frames=10)  # fmt: skip
    big = load_config("configs/videos.yaml", ["model.preset=predformer", "model.patch_size=4", "train.batch_size=16"])
    with pytest.raises(ConfigError, match=r"the NVIDIA H100 80GB HBM3 has 85.9 GB; lower train.batch_size or raise"):
        devices.check_step_fits(big.train, big.model, choices, frame_shape=(128, 128, 3), input_frames=10,
                                output_frames=10)  # fmt: skip


def test_the_doctor_states_the_memory_a_step_needs_per_clip(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NFP_HOST", "vm")
    overrides = _predformer(tiny_overrides, f"train.output_dir={tmp_path}/doc", "train.batch_size=2")
    assert main(["doctor", "--steps", "3", *overrides]) == 0
    cfg = load_config(None, overrides)
    per_clip = models.step_memory(cfg.model, frame_shape=(16, 16, 1), input_frames=3, output_frames=3, value_bytes=4)
    assert f"the model's estimate: {per_clip[0] / 2**20:.1f} MiB per clip in a training step" in capsys.readouterr().out


def test_no_two_weights_start_alike():
    """Each weight draws its own initial values (an initialiser shared by several weights would give them the same)."""
    cfg = load_config(None, [*TINY, "data.image_size=16", "data.digit_size=8"])
    model = models.build_model(cfg.model, frame_shape=(16, 16, 1), context_frames=3, predict_frames=3)
    kernels = [np.asarray(w.numpy()).ravel() for w in model.weights if w.path.endswith("kernel")]
    assert len(kernels) > 4
    firsts = {round(float(k[0]), 7) for k in kernels}
    assert len(firsts) == len(kernels)


def test_a_devices_memory_comes_from_its_name_its_table_or_the_containers_limit(tmp_path, monkeypatch):
    from nfp.data import plan
    from nfp.distribute.devices import Device

    gib = {name: Device("GPU", name).memory_bytes / 2**30 for name in (
        "NVIDIA A100-SXM4-80GB", "NVIDIA H100 NVL", "NVIDIA GH200 480GB", "NVIDIA L4", "NVIDIA H200")}  # fmt: skip
    assert gib == {"NVIDIA A100-SXM4-80GB": 80, "NVIDIA H100 NVL": 94, "NVIDIA GH200 480GB": 96, "NVIDIA L4": 24,
                   "NVIDIA H200": 141}  # fmt: skip
    assert Device("GPU", "Some New Card").memory_bytes is None  # unknown: no refusal on a guess
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(plan, "CGROUP_MEMORY_MAX", limit)
    physical = plan.memory_bytes()  # no file: the machine's
    limit.write_text("max\n")
    assert plan.memory_bytes() == physical
    limit.write_text(f"{2**30}\n")
    assert plan.memory_bytes() == min(physical, 2**30) and Device("CPU", "CPU").memory_bytes == 2**30


def test_drop_path_is_one_rate_for_every_transformer_as_predformers():
    from nfp.models.predformer.layers import GatedTransformer

    cfg = load_config(None, [*TINY, "model.blocks=2", "model.drop_path=0.1", "data.image_size=16", "data.digit_size=8"])
    model = models.build_model(cfg.model, frame_shape=(16, 16, 1), context_frames=3, predict_frames=3)
    core = model.get_layer("core")
    rates = [layer.drop_path for layer in core.layers if isinstance(layer, GatedTransformer)]
    assert rates == [0.1] * 8
