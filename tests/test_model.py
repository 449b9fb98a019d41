"""Models: causal in time for every cell and patch size, presets' shapes, patches, float32 state and output under
mixed precision, save/load, scheduled sampling."""

import keras
import numpy as np
import pytest

from nfp.config import load_config
from nfp.errors import ConfigError
from nfp.models.convlstm.model import build_model, rollout

TINY = ["model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]"]
CELLS = {
    "nfp": [],
    "nfp-patch4": ["model.patch_size=4"],
    "keras": ["model.cell=keras", "model.norm=batch"],
    "keras-patch2": ["model.cell=keras", "model.patch_size=2"],
}


def _model_cfg(*overrides):
    return load_config(None, [*TINY, "data.image_size=16", "data.digit_size=8", *overrides]).model


def _frames(shape=(2, 6, 16, 16, 1), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("cell", CELLS)
def test_output_t_ignores_inputs_after_t(cell):
    model = build_model(_model_cfg(*CELLS[cell]), image_size=16)
    x = _frames()
    t = 2
    changed = x.copy()
    changed[:, t + 1 :] = _frames(changed[:, t + 1 :].shape, seed=1)
    before, after = np.asarray(model(x)), np.asarray(model(changed))
    np.testing.assert_array_equal(before[:, : t + 1], after[:, : t + 1])
    assert np.abs(before[:, t + 1 :] - after[:, t + 1 :]).max() > 1e-6  # the later outputs do see the change


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("frames", [1, 3, 9])
def test_any_sequence_length_at_inference(cell, frames):
    model = build_model(_model_cfg(*CELLS[cell]), image_size=16)
    assert model(np.zeros((1, frames, 16, 16, 1), np.float32)).shape == (1, frames, 16, 16, 1)


def test_keras_io_preset_has_the_reference_parameter_count():
    model = build_model(load_config(None, ["model.preset=keras_io"]).model, image_size=64)
    assert model.count_params() == 746_689  # ConvLSTM2D 64 5×5 + BN, 64 3×3 + BN, 64 1×1, Conv3D 3×3×3
    assert [layer.filters for layer in model.layers if layer.name.startswith("convlstm")] == [64, 64, 64]


def test_convlstm_s_preset_is_openstls_shape():
    model = build_model(load_config(None, ["model.preset=convlstm_s"]).model, image_size=64)
    # per layer conv_x + conv_h, no bias in OpenSTL: 16→512 and 3 × 128→512 at 5×5, plus 4 × 128×512 at 5×5,
    # and the 1×1 head 128→16: OpenSTL's working ConvLSTM-S (≈11.7M); nfp adds gate and head biases and a step counter
    openstl = 25 * 512 * (16 + 128) + 3 * 25 * 512 * (128 + 128) + 128 * 16
    assert model.count_params() == openstl + 4 * 512 + 16 + 1
    assert model.get_layer("to_patches").output.shape == (None, None, 16, 16, 16)


def test_patches_round_trip_and_keep_each_patch_together():
    from nfp.models.convlstm.layers import DepthToSpace, SpaceToDepth

    x = _frames((2, 3, 8, 8, 1))
    patches = np.asarray(SpaceToDepth(4)(x))
    assert patches.shape == (2, 3, 2, 2, 16)
    np.testing.assert_array_equal(patches[0, 0, 1, 0], x[0, 0, 4:8, 0:4, 0].ravel())  # row-major within the patch
    np.testing.assert_array_equal(np.asarray(DepthToSpace(4)(patches)), x)


def test_a_patch_size_that_does_not_divide_the_frames_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"model.patch_size: got 3, expected a divisor of the frame's height and width \(16×16\)"
    ):
        build_model(
            load_config(None, [*TINY, "model.patch_size=3", "data.image_size=24", "data.digit_size=8"]).model,
            image_size=16,
        )


def test_sigmoid_output_is_a_probability_per_pixel_and_linear_is_not_squashed():
    x = _frames((1, 4, 16, 16, 1))
    out = np.asarray(build_model(_model_cfg(), image_size=16)(x))
    assert 0 <= out.min() and out.max() <= 1
    linear = build_model(_model_cfg("model.output_activation=linear"), image_size=16)
    linear.get_layer("convlstm").head_bias.assign([-2.0])
    assert np.asarray(linear(x)).min() < 0


def test_custom_keras_stack_follows_the_config():
    cfg = _model_cfg("model.cell=keras", "model.filters=[4, 6]", "model.kernel_sizes=[3, 1]", "model.norm=layer",
                     "model.dropout=0.2", "model.activation=relu")  # fmt: skip
    model = build_model(cfg, image_size=16)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("ConvLSTM2D") == 2 and kinds.count("Dropout") == 2
    assert kinds.count("LayerNormalization") == 1  # between the recurrent layers only
    assert model.get_layer("convlstm_1").filters == 6 and model.get_layer("convlstm_1").kernel_size == (1, 1)
    assert "BatchNormalization" not in kinds


def test_nfp_stack_follows_the_config():
    model = build_model(
        _model_cfg("model.filters=[4, 6]", "model.kernel_sizes=[3, 1]", "model.patch_size=2"), image_size=16
    )
    stack = model.get_layer("convlstm")
    assert [tuple(kx.shape) for kx, _, _ in stack.cells] == [(3, 3, 4, 16), (1, 1, 4, 24)]  # x: 2×2 patches, then 4
    assert [tuple(kh.shape) for _, kh, _ in stack.cells] == [(3, 3, 4, 16), (1, 1, 6, 24)]
    assert tuple(stack.head.shape) == (1, 1, 6, 4)


@pytest.mark.parametrize("cell", ["nfp", "keras"])
def test_mixed_precision_keeps_the_output_in_float32(cell):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(_model_cfg(*CELLS[cell], "model.patch_size=2"), image_size=16)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer({"nfp": "convlstm", "keras": "head"}[cell]).compute_dtype == "bfloat16"
    assert model(np.zeros((1, 2, 16, 16, 1), np.float32)).dtype == "float32"


def test_nfp_cell_keeps_its_state_in_float32_under_mixed_precision():
    """c grows by 0.001 a step; in bfloat16 it would stop at 0.5, where 0.001 is under half a unit in the last place."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(
            _model_cfg("model.filters=[1]", "model.kernel_sizes=[1]", "model.output_activation=linear"), image_size=16
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    stack = model.get_layer("convlstm")
    kernel_x, kernel_h, bias = stack.cells[0]
    kernel_x.assign(np.zeros(kernel_x.shape))
    kernel_h.assign(np.zeros(kernel_h.shape))
    bias.assign([20.0, 20.0, 1e-3, 20.0])  # i = f = o = 1, g = 0.001: c_t = c_t-1 + 0.001
    stack.head.assign(np.ones(stack.head.shape))
    out = np.asarray(model(np.zeros((1, 1000, 16, 16, 1), np.float32)))[0, -1, 0, 0, 0]
    assert out == pytest.approx(np.tanh(1.0), abs=0.01)  # h = tanh(c) of c = 1.0 after 1,000 steps


def test_a_model_saves_and_loads_as_keras(tmp_path):
    model = build_model(
        _model_cfg("model.patch_size=2", "train.scheduled_sampling=5"), image_size=16, scheduled_sampling=5
    )
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _frames()
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert loaded.get_layer("convlstm").get_config() == model.get_layer("convlstm").get_config()


def test_scheduled_sampling_feeds_predictions_after_the_context_and_counts_steps():
    cfg = _model_cfg("model.output_activation=linear")
    model = build_model(cfg, image_size=16, scheduled_sampling=1, context_frames=2)
    stack = model.get_layer("convlstm")
    x = _frames()
    teacher_forced = np.asarray(model(x, training=False))
    # step 0 of 1: η = 1, every input is the true frame
    np.testing.assert_allclose(np.asarray(model(x, training=True)), teacher_forced, atol=1e-6)
    assert int(stack.sampling_step.numpy()) == 1
    # η = 0 now: after the context the model sees only its own predictions, so the true frames there are ignored…
    free = np.asarray(model(x, training=True))
    changed = x.copy()
    changed[:, 2:] = _frames(changed[:, 2:].shape, seed=3)
    np.testing.assert_allclose(np.asarray(model(changed, training=True)), free, atol=1e-6)
    np.testing.assert_allclose(free[:, :2], teacher_forced[:, :2], atol=1e-6)  # …and the context is untouched
    # …and the outputs are the rollout's
    np.testing.assert_allclose(free[:, 1:], rollout(model, x[:, :2], 5), atol=1e-5)
    assert int(stack.sampling_step.numpy()) == 3
    np.testing.assert_allclose(np.asarray(model(changed)), np.asarray(model(changed, training=False)))  # inference: off


@pytest.mark.parametrize("step, eta", [(0, 1.0), (2, 0.8), (5, 0.5), (8, 0.2), (10, 0.0), (15, 0.0)])
def test_the_true_frame_is_fed_with_a_probability_falling_linearly_over_the_sampling_steps(step, eta):
    """η = 1 − step/N over N = 10 steps (then 0): the share of true frames after the context, over many draws."""
    model = build_model(_model_cfg(), image_size=16, scheduled_sampling=10, context_frames=2)
    stack = model.get_layer("convlstm")
    stack.sampling_step.assign(step)
    use_truth = np.asarray(stack._use_truth(20000, 6))
    assert use_truth[:, :2].all()  # the context is always the truth
    assert use_truth[:, 2:].mean() == pytest.approx(eta, abs=0.01)  # 80,000 draws: σ ≤ 0.002


@pytest.mark.parametrize("cell", CELLS)
def test_rollout_is_the_frame_by_frame_feedback_loop(cell):
    """An nfp-cell model rolls out in one pass (its stack feeds itself); any model must match the plain loop."""
    model = build_model(_model_cfg(*CELLS[cell], "model.output_activation=linear"), image_size=16)
    frames = _frames((2, 3, 16, 16, 1), seed=4)
    for _ in range(4):  # the loop a user would write
        frames = np.concatenate([frames, np.asarray(model(frames))[:, -1:]], axis=1)
    np.testing.assert_allclose(rollout(model, frames[:, :3], 4), frames[:, 3:], atol=1e-5)


def test_rollout_feeds_back_its_predictions():
    model = build_model(_model_cfg(), image_size=16)
    context = _frames((2, 3, 16, 16, 1), seed=2)
    pred = rollout(model, context, 4)
    assert pred.shape == (2, 4, 16, 16, 1)
    np.testing.assert_allclose(pred[:, 0], np.asarray(model(context))[:, -1], atol=1e-6)
    np.testing.assert_allclose(
        pred[:, 1], np.asarray(model(np.concatenate([context, pred[:, :1]], 1)))[:, -1], atol=1e-6
    )
