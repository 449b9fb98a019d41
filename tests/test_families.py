"""The family seam: `model.family` chosen by a preset or by name, each family's own keys, a direct family (SimVP/TAU)
through everything a model goes through — training, its loss term, evaluation, prediction, serving past its block,
resume, `.keras` files, colour and rectangular frames, 1 and 2 replicas alike, the doctor's FLOPs."""

import json
import textwrap
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import warm

from nfp import models
from nfp.cli import main
from nfp.config import load_config
from nfp.errors import ConfigError, ModelError

REPO = Path(__file__).resolve().parents[1]
TINY_SIMVP = ["model.spatial_channels=4", "model.temporal_channels=8"]


def _simvp(tiny_overrides, preset="tau_tiny", *extra) -> list[str]:
    """tiny_overrides with a tiny SimVP in place of its custom ConvLSTM (3 frames in, 3 out, 16×16)."""
    return [*(o for o in tiny_overrides if not o.startswith("model.")), f"model.preset={preset}", *TINY_SIMVP, *extra]


# --------------------------------------------------------------------------- config
def test_a_preset_implies_its_family_and_carries_its_recipe():
    cfg = load_config(None, ["model.preset=tau"])
    assert (cfg.model.family, cfg.model.translator, cfg.model.spatial_channels, cfg.model.temporal_channels) == (
        "simvp", "tau", 64, 512,
    )  # fmt: skip
    assert (cfg.model.encoder_blocks, cfg.model.translator_blocks, cfg.model.output_activation) == (4, 8, "linear")
    t = cfg.train
    assert (t.learning_rate, t.batch_size, t.optimizer, t.schedule.name, t.loss) == (
        1e-3,
        16,
        "adam",
        "onecycle",
        "mse",
    )
    assert (cfg.data.protocol, cfg.evaluate.context_frames) == ("context", cfg.data.context_frames)
    mine = load_config(None, ["model.preset=simvp_gsta", "train.learning_rate=0.01", "train.schedule.name=cosine"])
    assert (mine.model.translator, mine.train.learning_rate, mine.train.schedule.name) == ("gsta", 0.01, "cosine")


@pytest.mark.parametrize("config", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_keeps_or_names_its_family(config):
    cfg = load_config(REPO / config)
    assert cfg.model.family == models.PRESETS[cfg.model.preset]


@pytest.mark.parametrize("preset", ["tiny", "keras_io", "convlstm_s", "custom"])
def test_the_convlstm_presets_are_what_they_were(preset):
    cfg = load_config(None, [f"model.preset={preset}"])
    assert cfg.model.family == "convlstm"
    assert cfg.train.learning_rate == 1e-3 and cfg.train.schedule.name == "constant" and cfg.data.protocol == "shift"


def test_a_config_from_before_families_loads_as_a_convlstm(tmp_path):
    old = tmp_path / "old.yaml"  # a resolved config an earlier nfp wrote: every ConvLSTM key, no model.family
    old.write_text(
        "model: {preset: tiny, cell: nfp, filters: [64, 64], kernel_sizes: [3, 3], activation: tanh, norm: none,\n"
        "        patch_size: 4, dropout: 0.0, output_activation: linear}\n"
    )
    assert load_config(old).model == load_config(None, ["model.preset=tiny"]).model


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.preset=tau", "model.kernel_sizes=[3]"], "model.kernel_sizes: does not apply to model.family simvp"),
        (["model.preset=tiny", "model.translator=tau"], "model.translator: does not apply to model.family convlstm"),
        (["model.preset=custom", "model.family=simvp", "model.filters=[4]"], "model.filters: does not apply"),
        (["model.preset=tiny", "model.family=simvp"], "model.family: got simvp, but model.preset tiny is a convlstm"),
        (["model.preset=tau", "data.protocol=shift"], "data.protocol: got shift, expected context with model.family"),
        (["model.preset=tau", "evaluate.protocol=one_step"], "evaluate.protocol: got one_step, expected rollout"),
        (["model.preset=tau", "evaluate.context_frames=5"], "evaluate.context_frames: got 5, expected >= data.context"),
        (
            ["model.preset=tau", "train.scheduled_sampling=10"],
            "train.scheduled_sampling: got 10, expected 0 with model",
        ),
        (["model.preset=tau", "data.image_size=18", "data.digit_size=8"], "model.encoder_blocks: got 4 (2 stride-2"),
        (["model.preset=tau", "train.schedule.warmup_epochs=1"], "train.schedule.warmup_epochs: got 1, expected 0"),
        (["model.preset=tau", "model.encoder_blocks=3"], "model.encoder_blocks: got 3, expected an even number"),
        (["model.preset=predformer", "model.heads=3"], "model.width: got 256, expected a multiple of model.heads (3)"),
        (["model.preset=predformer", "data.image_size=60", "data.digit_size=8"], "model.patch_size: got 8, expected a"),
        (["model.preset=predformer", "model.filters=[4]"], "model.filters: does not apply to model.family predformer"),
        (["model.preset=tau", "model.width=64"], "model.width: does not apply to model.family simvp"),
        (["model.preset=predformer", "data.protocol=shift"], "data.protocol: got shift, expected context"),
    ],
)
def test_what_a_family_cannot_take_is_one_line_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_config_schema_names_every_familys_presets():
    import typing

    from nfp.config import ModelConfig

    literal = typing.get_type_hints(ModelConfig)["preset"]
    assert set(typing.get_args(literal)) == {*models.PRESETS, "custom"}


def test_a_family_alone_picks_its_default_preset():
    assert load_config(None, ["model.family=simvp"]).model.preset == models.family("simvp").DEFAULT_PRESET


def test_the_resolved_config_holds_its_familys_keys_only_and_loads_back_as_itself(tmp_path):
    for preset in ("tau_tiny", "tiny"):
        cfg = load_config(None, [f"model.preset={preset}"])
        path = tmp_path / "resolved.yaml"
        path.write_text(cfg.to_yaml())
        other = "filters" if cfg.model.family == "simvp" else "translator"
        assert other not in cfg.to_dict()["model"]
        assert load_config(path) == cfg


def test_a_gpu_compiles_simvps_whole_step_on_one_replica_and_none_when_replicated():
    from nfp.distribute import devices

    h100 = devices.Device("GPU", "NVIDIA H100 80GB HBM3", (9, 0))
    cfg = load_config(None, ["model.preset=tau"])
    assert devices.choose(cfg.train, cfg.model, [h100], replicated=False).xla == "step"
    replicated = devices.choose(cfg.train, cfg.model, [h100] * 8, replicated=True)
    assert replicated.xla == "off" and "model.family: simvp, replicated" in replicated.why
    forced = load_config(None, ["model.preset=tau", "train.jit_compile=on"])
    with pytest.raises(ConfigError, match="train.jit_compile: on, expected off or auto with model.family: simvp"):
        devices.choose(forced.train, forced.model, [h100] * 8, replicated=True)


# --------------------------------------------------------------------------- the direct family's model
@pytest.fixture(scope="module")
def direct_model():
    """A tiny TAU model: 3 frames in, 2 out, 16×16×1."""
    cfg = load_config(None, ["model.preset=tau_tiny", *TINY_SIMVP, "data.image_size=16", "data.digit_size=8"])
    keras.utils.set_random_seed(0)
    return models.build_model(cfg.model, frame_shape=(16, 16, 1), context_frames=3, predict_frames=2)


def test_a_direct_rollout_iterates_blocks_from_the_last_k_frames(direct_model):
    context = np.random.default_rng(0).random((2, 5, 16, 16, 1), dtype=np.float32)
    rolled = models.rollout(direct_model, context, 5)
    assert rolled.shape == (2, 5, 16, 16, 1) and rolled.dtype == np.float32
    first = np.asarray(direct_model(context[:, -3:]))  # the last k = 3 context frames → 2 frames
    second = np.asarray(direct_model(np.concatenate([context[:, -1:], first], axis=1)))
    third = np.asarray(direct_model(np.concatenate([first[:, -1:], second], axis=1)))
    np.testing.assert_allclose(rolled, np.concatenate([first, second, third[:, :1]], axis=1), atol=1e-5)
    np.testing.assert_allclose(models.rollout(direct_model, context, 1), first[:, :1], atol=1e-5)


def test_a_direct_rollout_refuses_fewer_frames_than_the_model_takes(direct_model):
    with pytest.raises(ModelError, match="got 2 frames, the model predicts from its last 3"):
        models.rollout(direct_model, np.zeros((1, 2, 16, 16, 1), np.float32), 4)


def test_the_family_of_a_saved_model_is_found_from_the_file(direct_model, tmp_path):
    direct_model.save(tmp_path / "m.keras")
    models.register_layers()
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert models.of_model(loaded) is models.family("simvp")
    context = np.random.default_rng(1).random((1, 3, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(models.rollout(loaded, context, 4), models.rollout(direct_model, context, 4), atol=1e-6)
    convlstm = models.build_model(load_config(None, ["model.preset=custom"]).model, frame_shape=(16, 16, 1))
    assert models.of_model(convlstm) is models.family("convlstm")


# --------------------------------------------------------------------------- through nfp's commands
@pytest.mark.slow
def test_tau_trains_with_its_loss_term_evaluates_predicts_serves_past_its_block_and_resumes(tiny_overrides, tmp_path):
    overrides = _simvp(tiny_overrides, "tau_tiny", "train.batch_size=4", "evaluate.every_n_epochs=1")
    assert main(["train", *overrides]) == 0
    out = tmp_path / "out"
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"differential_divergence", "val_differential_divergence", "val_mse"} <= set(header)
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["differential_divergence"] > 0
    assert (run.data.params["model.preset"], run.data.tags["model_family"]) == ("tau_tiny", "simvp")

    assert (
        main(["evaluate", *overrides, "--model", str(out / "checkpoints/best.keras"), "--out", str(tmp_path / "e")])
        == 0
    )
    report = json.loads((tmp_path / "e/report.json").read_text())
    assert report["predict_frames"] == 3 and np.isfinite(report["scores"]["model"]["mse"])
    assert main(["predict", *overrides, "--model", str(out / "checkpoints/best.keras"), "--input", "split:val:1",
                 "--horizon", "7", "--out", str(tmp_path / "p")]) == 0  # fmt: skip
    assert sorted(p.suffix for p in (tmp_path / "p").iterdir()) == [".gif", ".json", ".png"]  # inputs.json: which input

    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    served = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    context = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16, 1)).astype(np.uint8)
    for horizon in (1, 3, 8):  # shorter than its block of 3, the block, past it
        assert served.predict(context, params={"horizon": horizon}).shape == (2, horizon, 16, 16, 1)

    assert main(["train", *overrides, "train.epochs=3"]) == 0  # resumes after epoch 2, into the same run
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 3
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3  # the same run, its third epoch added


@pytest.mark.slow
def test_simvp_takes_colour_and_rectangular_frames(tiny_overrides):
    overrides = _simvp(tiny_overrides, "simvp_tiny", "data.frame_size=[16, 24]", "data.channels=3",
                       "data.background=photos", "train.epochs=1", "tracking.log_model=false")  # fmt: skip
    assert main(["train", *overrides]) == 0
    cfg = load_config(None, overrides)
    model = keras.saving.load_model(Path(cfg.train.output_dir, "checkpoints/best.keras"), compile=False)
    assert tuple(model.outputs[0].shape) == (None, 3, 16, 24, 3)


@pytest.mark.slow
def test_resuming_with_another_family_is_refused_before_any_work(tiny_overrides):
    assert main(["train", *tiny_overrides, "train.epochs=1", "tracking.enabled=false"]) == 0
    with pytest.raises(ConfigError, match=r"model.family: convlstm → simvp"):
        from nfp.training.train import train

        train(load_config(None, _simvp(tiny_overrides, "tau_tiny", "train.epochs=2", "tracking.enabled=false")))


def test_the_doctor_counts_a_direct_models_flops_from_its_family(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NFP_HOST", "vm")
    overrides = _simvp(tiny_overrides, "tau_tiny", f"train.output_dir={tmp_path}/doc", "train.batch_size=2")
    assert main(["doctor", "--steps", "3", *overrides]) == 0
    cfg = load_config(None, overrides)
    flops = models.flops_per_clip(cfg.model, frame_shape=(16, 16, 1), input_frames=3, output_frames=3)["train"]
    assert f"{flops / 1e9:.2f} GFLOP per clip" in capsys.readouterr().out


# --------------------------------------------------------------------------- 1 and 2 replicas alike
_REPLICAS = textwrap.dedent(
    """
    import json, numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from nfp import models
    from nfp.config import load_config
    from nfp.distribute import make_strategy
    from nfp.models.optim import build_loss, term_metrics
    PRESETS = {"simvp_tiny": ["model.spatial_channels=4", "model.temporal_channels=8"],
               "tau_tiny": ["model.spatial_channels=4", "model.temporal_channels=8"],
               "predformer_tiny": ["model.width=16", "model.heads=2", "model.blocks=1"],
               "predrnn_v2_tiny": ["model.filters=[4, 4]", "model.kernel_sizes=[3, 3]", "evaluate.context_frames=3",
                                   "evaluate.predict_frames=3"]}

    x = np.random.default_rng(0).random((32, 6, 16, 16, 1), dtype=np.float32)
    direct = tf.data.Dataset.from_tensor_slices((x[:, :3], x[:, 3:])).batch(8)  # 4 steps of a global batch of 8
    shift = tf.data.Dataset.from_tensor_slices((x[:, :-1], x[:, 1:])).batch(8)  # the autoregressive protocol
    out = {}
    for name, devices in (("default", "[]"), ("mirrored", "['/cpu:0', '/cpu:1']")):
        strategy = None
        for preset, sizes in PRESETS.items():
            cfg = load_config(None, [f"distribute.strategy={name}", f"distribute.devices={devices}",
                                     f"model.preset={preset}", *sizes,
                                     "data.image_size=16", "data.digit_size=8", "data.frames=6",
                                     "data.context_frames=3", "data.predict_frames=3"])
            strategy = strategy or make_strategy(cfg.distribute)
            keras.utils.set_random_seed(0)
            terms = models.loss_terms(cfg.model)
            with strategy.scope():
                model = models.build_model(cfg.model, frame_shape=(16, 16, 1), context_frames=3, predict_frames=3,
                                           sampling_from=3)
                model.compile(keras.optimizers.SGD(0.1), build_loss(cfg.train, terms), metrics=term_metrics(terms))
            if models.is_direct(cfg.model):
                ds = direct
            else:  # PredRNN-V2: past its reverse sampling schedule, whose draws differ per replica
                ds = shift
                model.get_layer("predrnn_v2").sampling_step.assign(10**6)
            steps = []
            record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: steps.append(dict(logs)))
            model.fit(ds, epochs=2, verbose=0, callbacks=[record])
            moving = [float(np.mean(w.numpy())) for w in model.non_trainable_weights if "moving_" in w.path]
            out[f"{preset}/{name}"] = {"replicas": strategy.num_replicas_in_sync, "steps": steps, "moving": moving}
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_one_and_two_replicas_give_the_same_losses_step_by_step_for_each_new_family():
    """From the same weights on the same global batches. Tolerance: relative 1e-4, float32 sums taken in another
    order (per replica, then all-reduced) and BatchNorm's statistics synchronized across the replicas; an
    unsynchronized BatchNorm or a loss averaged per replica instead of over the global batch moves them by ~1e-2."""
    proc = warm.run(["-c", _REPLICAS], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for preset in ("simvp_tiny", "tau_tiny", "predformer_tiny", "predrnn_v2_tiny"):
        one, two = out[f"{preset}/default"], out[f"{preset}/mirrored"]
        assert (one["replicas"], two["replicas"]) == (1, 2)
        assert len(one["steps"]) == len(two["steps"]) == 8
        for a, b in zip(one["steps"], two["steps"]):
            assert b == pytest.approx(a, rel=1e-4), preset
        # BatchNorm's moving statistics (means over channels): unsynchronized, each replica's variance would be of its
        # half batch; 1e-3, as they accumulate the float32 round-off of 8 steps' statistics
        assert two["moving"] == pytest.approx(one["moving"], rel=1e-3), preset
        assert one["steps"][-1]["loss"] < one["steps"][0]["loss"], preset
    assert "differential_divergence" in out["tau_tiny/default"]["steps"][0]
    assert "decoupling" in out["predrnn_v2_tiny/default"]["steps"][0]  # its loss term, added by the layer


@pytest.mark.parametrize("preset", ["tiny", "tau_tiny", "predformer_tiny", "predrnn_v2_tiny"])
def test_each_familys_flop_count_matches_the_built_models(preset):
    """The count the doctor reports (nfp.models.flops_per_clip, from the config) against TensorFlow's profiler over
    the built model's forward graph: within 5% (the analytic count's elementwise terms are rough). Not `keras_io`:
    keras.layers.ConvLSTM2D steps in a while loop, whose body the profiler counts once, not once per frame."""
    import tensorflow as tf

    cfg = load_config(None, [f"model.preset={preset}", "data.image_size=16", "data.digit_size=8"])
    direct = models.is_direct(cfg.model)
    k, n = (10, 10) if direct else (6, 6)
    model = models.build_model(cfg.model, frame_shape=(16, 16, 1), context_frames=k, predict_frames=n)
    graph = (
        tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec((1, k, 16, 16, 1))).graph
    )
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profiled = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
    counted = models.flops_per_clip(cfg.model, frame_shape=(16, 16, 1), input_frames=k, output_frames=n)["forward"]
    assert counted == pytest.approx(profiled, rel=0.05)


def test_a_checkpoint_saved_before_the_seam_loads_and_predicts_the_same(tmp_path):
    """nfp's checkpoints and logged models from before nfp/models/ name their layers' module `nfp.layers`: Keras
    finds them by their registered name (`nfp>ConvLSTMStack`), which the move kept."""
    import zipfile

    from nfp.inference.model_source import load_model

    cfg = load_config(None, ["model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]"])
    model = models.build_model(cfg.model, frame_shape=(16, 16, 1))
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as new, zipfile.ZipFile(tmp_path / "old.keras", "w") as old:
        for item in new.infolist():
            data = new.read(item)
            if item.filename == "config.json":
                assert b'"nfp.models.convlstm.layers"' in data
                data = data.replace(b'"nfp.models.convlstm.layers"', b'"nfp.layers"')
            old.writestr(item, data)
    loaded = load_model(str(tmp_path / "old.keras"))
    x = np.random.default_rng(0).random((1, 4, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(models.rollout(loaded, x, 3), models.rollout(model, x, 3), atol=1e-6)


# --------------------------------------------------------------------------- a kill mid-schedule
NEW_FAMILY_SIZES = {
    "predrnn_v2_tiny": ["model.filters=[4, 4]", "model.kernel_sizes=[3, 3]"],
    "predformer_tiny": ["model.width=16", "model.heads=2", "model.blocks=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(NEW_FAMILY_SIZES))
def test_a_new_family_killed_mid_schedule_resumes_it_where_it_stopped(preset, tiny_overrides, tmp_path):
    """SIGKILL right after epoch 2's backup of 4 (their recipe's OneCycle, per step; PredRNN-V2's reverse sampling
    counted in the model), then the same command: each epoch's learning rate, and PredRNN-V2's sampling step at the
    end, are those of an uninterrupted run."""
    import csv

    from conftest import Trainer

    from nfp.rundir import RunDir

    def overrides(out):
        kept = (o for o in tiny_overrides if not o.startswith(("model.", "train.output_dir=")))
        return [*kept, f"model.preset={preset}", *NEW_FAMILY_SIZES[preset], "train.epochs=4",
                "train.steps_per_epoch=6", "train.verbose=1", "train.images.every_n_epochs=0",
                "tracking.enabled=false", f"train.output_dir={out}"]  # fmt: skip

    def learning_rates(out):
        with (out / "history.csv").open() as f:
            return [float(row["learning_rate"]) for row in csv.DictReader(f)]

    def sampling_step(out):
        models.register_layers()
        model = keras.saving.load_model(out / "checkpoints/last.keras", compile=False)
        return int(model.get_layer("predrnn_v2").sampling_step.numpy()) if preset.startswith("predrnn") else None

    assert main(["train", *overrides(tmp_path / "whole")]) == 0
    killed = Trainer(overrides(tmp_path / "killed"))
    killed.wait_until(lambda: RunDir(str(tmp_path / "killed")).resume_epoch() == 2, "the backup of epoch 2")
    killed.kill()
    again = Trainer(overrides(tmp_path / "killed"))
    assert again.finish() == 0, again.stderr[-3000:]
    assert "resuming after epoch 2 of 4" in again.stderr
    whole, resumed = learning_rates(tmp_path / "whole"), learning_rates(tmp_path / "killed")
    assert len(resumed) == 4 and resumed == pytest.approx(whole, rel=1e-6)
    assert len(set(whole)) == 4  # OneCycle moved it every epoch
    assert sampling_step(tmp_path / "killed") == sampling_step(tmp_path / "whole")
    if preset.startswith("predrnn"):
        assert sampling_step(tmp_path / "whole") == 4 * 6
