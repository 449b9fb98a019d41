"""Model presets: causal head, the keras-io parameter count, any sequence length, float32 output under mixed precision."""

import numpy as np
import pytest

from nfp.config import load_config
from nfp.model import build_model, rollout


def _model_cfg(*overrides):
    return load_config(None, ["model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]", *overrides]).model


def test_output_t_ignores_inputs_after_t():
    model = build_model(_model_cfg(), image_size=16)
    rng = np.random.default_rng(0)
    x = rng.random((2, 6, 16, 16, 1), dtype=np.float32)
    t = 2
    changed = x.copy()
    changed[:, t + 1 :] = rng.random(changed[:, t + 1 :].shape, dtype=np.float32)
    before, after = np.asarray(model(x)), np.asarray(model(changed))
    np.testing.assert_array_equal(before[:, : t + 1], after[:, : t + 1])
    assert np.abs(before[:, t + 1 :] - after[:, t + 1 :]).max() > 1e-6  # the later outputs do see the change


def test_keras_io_preset_has_the_reference_parameter_count():
    model = build_model(load_config(None, ["model.preset=keras_io"]).model, image_size=64)
    assert model.count_params() == 746_689  # ConvLSTM2D 64 5×5 + BN, 64 3×3 + BN, 64 1×1, Conv3D 3×3×3
    assert [layer.filters for layer in model.layers if layer.name.startswith("convlstm")] == [64, 64, 64]


@pytest.mark.parametrize("frames", [1, 3, 9])
def test_any_sequence_length_at_inference(frames):
    model = build_model(_model_cfg(), image_size=16)
    out = model(np.zeros((1, frames, 16, 16, 1), np.float32))
    assert out.shape == (1, frames, 16, 16, 1)


def test_output_is_a_probability_per_pixel():
    model = build_model(_model_cfg(), image_size=16)
    out = np.asarray(model(np.random.default_rng(1).random((1, 4, 16, 16, 1), dtype=np.float32)))
    assert 0 <= out.min() and out.max() <= 1


def test_custom_stack_follows_the_config():
    cfg = _model_cfg(
        "model.filters=[4, 6]",
        "model.kernel_sizes=[3, 1]",
        "model.norm=layer",
        "model.dropout=0.2",
        "model.activation=relu",
    )
    model = build_model(cfg, image_size=16)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("ConvLSTM2D") == 2 and kinds.count("Dropout") == 2
    assert kinds.count("LayerNormalization") == 1  # between the recurrent layers only
    assert model.get_layer("convlstm_1").filters == 6 and model.get_layer("convlstm_1").kernel_size == (1, 1)
    assert "BatchNormalization" not in kinds
    no_norm = build_model(_model_cfg("model.norm=none"), image_size=16)
    assert not any("Normalization" in type(layer).__name__ for layer in no_norm.layers)


def test_mixed_precision_keeps_the_output_in_float32():
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(_model_cfg(), image_size=16)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("head").compute_dtype == "float16"
    assert model(np.zeros((1, 2, 16, 16, 1), np.float32)).dtype == "float32"


def test_rollout_feeds_back_its_predictions():
    model = build_model(_model_cfg(), image_size=16)
    context = np.random.default_rng(2).random((2, 3, 16, 16, 1), dtype=np.float32)
    pred = rollout(model, context, 4)
    assert pred.shape == (2, 4, 16, 16, 1)
    np.testing.assert_allclose(pred[:, 0], np.asarray(model(context))[:, -1], atol=1e-6)
    np.testing.assert_allclose(
        pred[:, 1], np.asarray(model(np.concatenate([context, pred[:, :1]], 1)))[:, -1], atol=1e-6
    )
