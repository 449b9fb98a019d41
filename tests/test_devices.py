"""The GPU decisions (nfp.distribute.devices) for the devices a machine shows, and XLA on the CPU with a GPU's choices forced:
nfp's cell compiles with its time loop bounded, a model that does not compile falls back under auto, errors under on."""

import os
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import warm

from nfp.config import load_config
from nfp.distribute import devices
from nfp.distribute.devices import Device, choose
from nfp.errors import ConfigError, TrainingError
from nfp.models.convlstm import layers
from nfp.models.convlstm.model import build_model, rollout

H100 = Device("GPU", "NVIDIA H100 80GB HBM3", (9, 0))
A100 = Device("GPU", "NVIDIA A100-SXM4-40GB", (8, 0))
T4 = Device("GPU", "Tesla T4", (7, 5))
CPU = Device("CPU", "CPU")
TINY = ["model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]", "data.image_size=16", "data.digit_size=8"]


def _cfg(*overrides):
    return load_config(None, [*TINY, *overrides])


def _choose(devices_seen, *overrides, replicated=False):
    cfg = _cfg(*overrides)
    return choose(cfg.train, cfg.model, devices_seen, replicated=replicated)


# --------------------------------------------------------------------------- what auto chooses
def test_auto_on_gpus_is_bfloat16_and_xla_where_every_gpu_computes_bf16():
    one = _choose([H100], "train.mixed_precision=auto")
    assert (one.policy, one.xla) == ("mixed_bfloat16", "step")
    assert _choose([A100, A100], "train.mixed_precision=auto").policy == "mixed_bfloat16"
    assert _choose([H100, T4], "train.mixed_precision=auto").policy == "mixed_float16"  # the weakest decides
    assert _choose([Device("GPU", "unknown")], "train.mixed_precision=auto").policy == "mixed_float16"


def test_auto_on_a_cpu_is_float32_without_xla():
    choices = _choose([CPU], "train.mixed_precision=auto")
    assert (choices.policy, choices.xla, choices.jit_compile) == ("float32", "off", False)
    assert "no GPU" in choices.why


def test_forced_knobs_make_a_cpu_take_a_gpus_choices():
    forced = _choose([CPU], "train.mixed_precision=bfloat16", "train.jit_compile=on")
    assert (forced.policy, forced.xla) == (_choose([H100], "train.mixed_precision=auto").policy, "step")
    assert _choose([CPU], "train.mixed_precision=float16").policy == "mixed_float16"
    assert _choose([H100], "train.mixed_precision=off", "train.jit_compile=off").policy == "float32"
    assert _choose([H100], "train.jit_compile=off").xla == "off"


def test_replicated_training_compiles_the_nfp_cell_not_the_step():
    assert _choose([H100] * 8, replicated=True).xla == "cell"  # Keras cannot compile a replicated step
    assert _choose([CPU], "train.jit_compile=on", replicated=True).xla == "cell"


def test_the_keras_cell_replicated_goes_without_xla_under_auto_and_is_refused_under_on():
    choices = _choose([H100] * 8, "model.cell=keras", replicated=True)
    assert choices.xla == "off" and "keras-team/keras/issues/19005" in choices.why
    with pytest.raises(ConfigError, match=r"^train.jit_compile: on, expected off or auto with model.cell: keras"):
        _choose([CPU], "model.cell=keras", "train.jit_compile=on", replicated=True)


def test_old_boolean_mixed_precision_still_reads():
    assert load_config(None, ["train.mixed_precision=true"]).train.mixed_precision == "auto"
    assert load_config(None, ["train.mixed_precision=false"]).train.mixed_precision == "off"


def test_peak_rates_for_the_cards_in_the_table():
    assert devices.peak_tflops(H100) == devices.peak_tflops(Device("GPU", "NVIDIA H200")) == 989.0
    assert devices.peak_tflops(A100) == 312.0 and devices.peak_tflops(Device("GPU", "NVIDIA L4")) == 121.0
    assert devices.peak_tflops(T4) is None
    assert devices.peak_tflops(CPU) > 0


# --------------------------------------------------------------------------- XLA on the TensorFlow backend
def _xla_step(model):
    """Forward and gradients as one XLA function, on clips of any length (the time axis unknown when traced)."""
    import tensorflow as tf

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec((None, None, 16, 16, 1))])
    def step(x):
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_mean(tf.square(y))
        return y, tape.gradient(loss, model.trainable_weights)

    return step


@pytest.mark.parametrize(
    "overrides", [[], ["model.patch_size=4"], ["model.patch_size=2", "train.scheduled_sampling=3"]]
)
def test_the_nfp_cell_compiles_under_xla_for_any_clip_length(overrides):
    """A clip length unknown at tracing runs through tf.scan bounded by the length; XLA compiles once per length."""
    cfg = _cfg(*overrides)
    model = build_model(cfg.model, image_size=16, scheduled_sampling=cfg.train.scheduled_sampling, context_frames=2)
    step = _xla_step(model)
    for frames in (3, 5):
        x = np.random.default_rng(frames).random((2, frames, 16, 16, 1), dtype=np.float32)
        y, grads = step(x)
        assert y.shape == x.shape and all(np.isfinite(np.asarray(g)).all() for g in grads)
        if not cfg.train.scheduled_sampling:
            np.testing.assert_allclose(np.asarray(y), np.asarray(model(x, training=True)), atol=1e-5)


def test_an_unbounded_time_loop_is_caught_before_training(monkeypatch):
    """Keras's TF ops.scan (no maximum_iterations) is what nfp's cell used to run: XLA cannot size its gradient."""
    model = build_model(_cfg().model, image_size=16)
    assert devices.xla_failure(model, (2, 4, 16, 16, 1), loss=keras.losses.MeanSquaredError()) is None
    monkeypatch.setattr(
        layers, "time_loop", lambda step, carry, xs: keras.ops.scan(lambda c, x: (step(c, x),) * 2, carry, xs)[1]
    )
    cause = devices.xla_failure(
        build_model(_cfg().model, image_size=16), (2, 4, 16, 16, 1), loss=keras.losses.MeanSquaredError()
    )
    assert cause and "fixed tensor list size" in cause


def test_the_rollout_compiles_under_xla_and_matches_the_plain_one():
    for cell in (["model.output_activation=linear"], ["model.cell=keras", "model.output_activation=linear"]):
        model = build_model(_cfg(*cell).model, image_size=16)
        context = np.random.default_rng(1).random((2, 3, 16, 16, 1), dtype=np.float32)
        np.testing.assert_allclose(rollout(model, context, 3, jit_compile=True), rollout(model, context, 3), atol=1e-5)


def test_the_xla_cell_is_one_xla_function_of_the_weights_values_and_saves_without_it(tmp_path):
    model = build_model(_cfg("model.patch_size=2").model, image_size=16, xla_cell=True)
    x = np.random.default_rng(2).random((2, 4, 16, 16, 1), dtype=np.float32)
    plain = build_model(_cfg("model.patch_size=2").model, image_size=16)
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(plain(x)), atol=1e-5)
    stack = model.get_layer("convlstm")
    assert stack._xla_functions[False].experimental_get_tracing_count() == 1
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").get_layer("convlstm").jit_compile is False  # devices decide


# --------------------------------------------------------------------------- train under forced GPU choices
def _unbounded(monkeypatch):
    monkeypatch.setattr(
        layers, "time_loop", lambda step, carry, xs: keras.ops.scan(lambda c, x: (step(c, x),) * 2, carry, xs)[1]
    )


@pytest.mark.slow
def test_a_model_xla_cannot_compile_falls_back_under_auto_with_one_warning_and_a_tag(
    tiny_overrides, monkeypatch, caplog
):
    from nfp.training.train import train

    _unbounded(monkeypatch)
    # auto turns XLA on where a GPU is visible: show it one
    monkeypatch.setattr(devices, "visible_devices", lambda: [H100])
    monkeypatch.setattr("nfp.tracking.training_run._device_kind", lambda seen: "1x NVIDIA H100 (pretend)")
    summary = train(load_config(None, [*tiny_overrides, "train.jit_compile=auto", "train.epochs=1"]))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "XLA" in r.getMessage()]
    assert len(warnings) == 1 and "fixed tensor list size" in warnings[0]
    tags = mlflow.MlflowClient().get_run(summary["run_id"]).data.tags
    assert tags["xla"] == "off" and "fixed tensor list size" in tags["xla_fallback"]
    assert tags["precision"] == "float32"  # mixed_precision off in the tiny config


def test_a_model_xla_cannot_compile_is_one_line_and_exit_2_under_on(tiny_overrides, monkeypatch, capsys):
    from nfp.cli import main

    _unbounded(monkeypatch)
    assert main(["train", *tiny_overrides, "train.jit_compile=on"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: train.jit_compile: on, but XLA cannot compile the model (")
    assert "fixed tensor list size" in err[-1]
    with pytest.raises(TrainingError):
        devices.confirmed(
            devices.Choices("float32", "step", ""), "on", build_model(_cfg().model, image_size=16), (1, 3, 16, 16, 1),
            loss=keras.losses.MeanSquaredError(),
        )  # fmt: skip


def test_the_suites_xla_programs_are_compiled_once_a_run_and_read_back_by_another_process():
    """The tests' persistent XLA cache (conftest: TensorFlow's own, one directory per run, which the other worker's
    tests fill meanwhile): a program one test process compiled, the next reads back instead of compiling it again;
    the same result either way."""
    flags = dict(flag.split("=", 1) for flag in os.environ["TF_XLA_FLAGS"].split() if "=" in flag)
    cache = Path(flags["--tf_xla_persistent_cache_directory"])
    code = (
        "import tensorflow as tf\n"
        "def nfp_cache_probe(x):\n    return x * 3 + 1\n"
        "print(tf.function(nfp_cache_probe, jit_compile=True)(tf.ones([5, 13])).numpy().sum())"
    )

    def entries():  # this program's: its function's name is in them
        found = cache.glob("*.pb") if cache.is_dir() else []
        return {p.name: p.stat().st_mtime_ns for p in found if b"nfp_cache_probe" in p.read_bytes()}

    assert entries() == {}  # a program no other test compiles
    first = warm.run(["-c", code], timeout=120)
    compiled = entries()
    again = warm.run(["-c", code], timeout=120)
    assert first.returncode == again.returncode == 0, first.stderr[-2000:] + again.stderr[-2000:]
    assert first.stdout.split() == again.stdout.split() == ["260.0"]
    assert len(compiled) == 1  # the program, written once compiled
    assert entries() == compiled  # read back: not written again
