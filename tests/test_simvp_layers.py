"""SimVP (gSTA, TAU) layers: OpenSTL's parameter counts and FLOPs, output shapes for n <, =, > k, float32 output
under mixed precision, .keras round trip, TAU's differential divergence, a training step."""

import types

import keras
import numpy as np
import pytest

from nfp.models.simvp.cost import flops_per_clip
from nfp.models.simvp.layers import DropPath, build_model, differential_divergence

# OpenSTL's SimVP_Model instantiated in PyTorch (mmnist sizes, 10×1×64×64): parameters, and its BatchNorms'
# running mean and variance (buffers there, weights that count_params() counts here: 2·C for each of 16 BNs
# over 640 or 512 channels). docs/en/model_zoos/video_benchmarks.md publishes 46.8M / 16.5G and 44.7M / 16.0G,
# FLOPs from fvcore (a multiply-add = 1 FLOP).
OPENSTL = {
    "gsta": {"torch_params": 46_769_665, "published_params": 46.8e6, "published_macs": 16.5e9},
    "tau": {"torch_params": 44_656_001, "published_params": 44.7e6, "published_macs": 16.0e9},
}
BN_RUNNING_STATS = 2 * (2 * 640 + 7 * 2 * 512)


def _cfg(translator="gsta", **overrides):
    keys = dict(
        preset="test", translator=translator, spatial_channels=4, temporal_channels=8, encoder_blocks=2,
        translator_blocks=2, encoder_kernel=3, decoder_kernel=3, mlp_ratio=8.0, drop_path=0.0,
        output_activation="linear",
    )  # fmt: skip
    return types.SimpleNamespace(**{**keys, **overrides})


def _full_cfg(translator):
    return _cfg(translator, spatial_channels=64, temporal_channels=512, encoder_blocks=4, translator_blocks=8)


def _build(cfg, frame_shape=(16, 16, 1), k=3, n=3):
    return build_model(cfg, frame_shape=frame_shape, context_frames=k, predict_frames=n)


def _clips(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def full_models():
    return {tr: _build(_full_cfg(tr), (64, 64, 1), 10, 10) for tr in OPENSTL}


def _tf_profiler_flops(model, input_shape) -> int:
    import tensorflow as tf

    spec = tf.TensorSpec(input_shape, tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


@pytest.mark.parametrize("translator", OPENSTL)
def test_parameter_counts_match_openstl(translator, full_models):
    model, ref = full_models[translator], OPENSTL[translator]
    count = model.count_params()
    assert count == ref["torch_params"] + BN_RUNNING_STATS
    assert abs(count - ref["published_params"]) / ref["published_params"] < 0.02
    assert (
        flops_per_clip(_full_cfg(translator), frame_shape=(64, 64, 1), context_frames=10, predict_frames=10)["params"]
        == count
    )


@pytest.mark.parametrize("translator", OPENSTL)
@pytest.mark.parametrize("k, n", [(3, 3), (3, 2), (3, 7)])
def test_tiny_parameter_count_is_analytic(translator, k, n):
    cfg = _cfg(translator, drop_path=0.1)
    assert (
        _build(cfg, (16, 24, 3), k, n).count_params()
        == flops_per_clip(cfg, frame_shape=(16, 24, 3), context_frames=k, predict_frames=n)["params"]
    )


@pytest.mark.parametrize(
    "name, cfg, frame_shape, k, n",
    [
        ("gsta", _cfg("gsta"), (16, 16, 1), 3, 3),
        ("tau", _cfg("tau"), (16, 16, 1), 3, 3),
        ("gsta colour, n > k", _cfg("gsta", encoder_blocks=4), (16, 24, 3), 3, 7),
        ("tau sigmoid, n < k", _cfg("tau", output_activation="sigmoid"), (16, 16, 1), 4, 2),
    ],
)
def test_flops_match_tf_profiler(name, cfg, frame_shape, k, n):
    """Independent count: TensorFlow's profiler (float_operation) over the graph of the model's forward concrete
    function at batch 1 (it counts Conv2D, depthwise, BiasAdd, MatMul and elementwise ops, 2 per multiply-add)."""
    analytic = flops_per_clip(cfg, frame_shape=frame_shape, context_frames=k, predict_frames=n)
    profiled = _tf_profiler_flops(_build(cfg, frame_shape, k, n), (1, k, *frame_shape))
    assert analytic["forward"] == pytest.approx(profiled, rel=0.05)
    assert analytic["train"] == 3 * analytic["forward"]


@pytest.mark.parametrize("translator", OPENSTL)
def test_full_flops_match_profiler_and_openstl(translator, full_models):
    forward = flops_per_clip(_full_cfg(translator), frame_shape=(64, 64, 1), context_frames=10, predict_frames=10)[
        "forward"
    ]
    assert forward == pytest.approx(_tf_profiler_flops(full_models[translator], (1, 10, 64, 64, 1)), rel=0.05)
    # forward/2 counts multiply-adds as fvcore does: 16.57G (gsta) and 15.99G (tau) against 16.5G and 16.0G, ratios
    # 1.004 and 0.999 (its conv and linear multiply-adds alone, counted in PyTorch, are 16.47G and 15.89G)
    ratio = forward / 2 / OPENSTL[translator]["published_macs"]
    print(f"{translator}: forward {forward / 1e9:.2f} GFLOPs, forward/2 ÷ OpenSTL's = {ratio:.3f}")
    assert ratio == pytest.approx(1, abs=0.10)


@pytest.mark.parametrize("translator", OPENSTL)
@pytest.mark.parametrize("n", [2, 3, 7])
def test_output_shapes_colour_rectangular(translator, n):
    model = _build(_cfg(translator), (16, 24, 3), 3, n)
    assert model.name == "simvp_test"
    assert model.input.name == "frames" or model.inputs[0].name == "frames"
    y = model(_clips((2, 3, 16, 24, 3)))
    assert tuple(y.shape) == (2, n, 16, 24, 3)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


def test_n_greater_than_k_feeds_predictions_back():
    """n > k: blocks of k from the model's own last k predictions (OpenSTL's SimVP.forward)."""
    model = _build(_cfg("gsta"), k=3, n=7)
    core = model.get_layer("core")
    x = _clips((2, 3, 16, 16, 1))
    first = core(x)
    second = core(first)
    third = core(second)
    expected = np.concatenate([first, second, np.asarray(third)[:, :1]], axis=1)
    np.testing.assert_allclose(model(x), expected, atol=1e-5)


@pytest.mark.parametrize("translator", OPENSTL)
def test_mixed_precision_output_is_float32(translator):
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = _build(_cfg(translator), k=3, n=4)
        y = model(_clips((2, 3, 16, 16, 1)), training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert np.isfinite(np.asarray(y)).all()


@pytest.mark.parametrize("translator", OPENSTL)
def test_keras_round_trip(translator, tmp_path):
    model = _build(_cfg(translator, drop_path=0.2, output_activation="sigmoid"), k=3, n=5)
    x = _clips((2, 3, 16, 16, 1))
    model(x, training=True)  # moves the BatchNorm statistics off their initial values
    path = tmp_path / "simvp.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    assert loaded.count_params() == model.count_params()
    norms = [layer for layer in loaded.get_layer("core").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 4 and all(bn.synchronized and bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in norms)


def _diff_div_reference(pred, true, tau=0.1, eps=1e-12):
    """openstl/methods/tau.py diff_div_reg in NumPy: the batch mean."""
    b, t = pred.shape[:2]

    def softmax_gap(y):
        gap = (y[:, 1:] - y[:, :-1]).reshape(b, t - 1, -1) / tau
        e = np.exp(gap - gap.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax_gap(pred.astype(np.float64)), softmax_gap(true.astype(np.float64))
    return (p * np.log(p / (q + eps) + eps)).mean()


def test_differential_divergence_matches_openstl():
    true, pred = _clips((3, 5, 8, 6, 2), 1), _clips((3, 5, 8, 6, 2), 2)
    per_clip = np.asarray(differential_divergence(true, pred))
    assert per_clip.shape == (3,)
    assert per_clip.mean() == pytest.approx(_diff_div_reference(pred, true), rel=1e-4)
    for i in range(3):  # per clip: the same formula on that clip alone
        assert per_clip[i] == pytest.approx(_diff_div_reference(pred[i : i + 1], true[i : i + 1]), rel=1e-4)
    assert per_clip.min() > 0
    assert np.abs(np.asarray(differential_divergence(true, true))).max() < 1e-6
    np.testing.assert_array_equal(differential_divergence(true[:, :2], pred[:, :2]), np.zeros(3))


def test_drop_path_drops_whole_samples_in_training_only():
    x = np.ones((64, 4, 4, 2), np.float32)
    layer = DropPath(0.5, seed=1)
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = np.asarray(layer(x, training=True))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # one draw per sample
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    np.testing.assert_array_equal(DropPath(0.0)(x, training=True), x)


@pytest.mark.parametrize("translator", OPENSTL)
def test_a_training_step_runs(translator):
    """tau's step is traced, as training runs it; gsta's runs eagerly (tracing costs ~10 s on a CPU)."""
    model = _build(_cfg(translator), k=3, n=4)

    def loss(y_true, y_pred):  # TAU's objective: MSE + α·differential divergence
        mse = keras.ops.mean(keras.ops.square(y_true - y_pred), axis=(1, 2, 3, 4))
        return mse + 0.1 * differential_divergence(y_true, y_pred)

    tau = translator == "tau"
    model.compile(optimizer="adam", loss=loss if tau else "mse", run_eagerly=not tau)
    model.optimizer.build(model.trainable_variables)  # as nfp train does: the step traced once, not twice
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    history = model.fit(_clips((4, 3, 16, 16, 1)), _clips((4, 4, 16, 16, 1), 1), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before))


def test_builds_and_runs_on_jax(tmp_path):
    """The layers are keras.ops only: build, call and count on the JAX backend (skipped where jax is missing)."""
    pytest.importorskip("jax")
    import os
    import subprocess
    import sys

    script = (
        "import sys, types, keras, numpy as np\n"
        "from nfp.models.simvp.cost import flops_per_clip\n"
        "from nfp.models.simvp.layers import build_model, differential_divergence\n"
        "for tr in ('gsta', 'tau'):\n"
        f"    cfg = types.SimpleNamespace(**{_cfg().__dict__!r})\n"
        "    cfg.translator, cfg.drop_path = tr, 0.1\n"
        "    m = build_model(cfg, frame_shape=(16, 16, 1), context_frames=3, predict_frames=5)\n"
        "    x = np.random.rand(2, 3, 16, 16, 1).astype('float32')\n"
        "    y = m(x, training=True)\n"
        "    assert tuple(y.shape) == (2, 5, 16, 16, 1), y.shape\n"
        "    assert keras.backend.standardize_dtype(y.dtype) == 'float32', y.dtype\n"
        "    f = flops_per_clip(cfg, frame_shape=(16, 16, 1), context_frames=3, predict_frames=5)\n"
        "    assert m.count_params() == f['params']\n"
        "    assert tuple(differential_divergence(y, y * 2).shape) == (2,)\n"
        "    m.save(sys.argv[1])\n"
        "    np.testing.assert_allclose(keras.saving.load_model(sys.argv[1])(x), m(x), atol=1e-6)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m.keras")], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
