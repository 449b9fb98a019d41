"""Scoring: the rollout and one_step protocols, the baselines next to the model, OpenSTL metrics per predictor."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_model

from nfp.errors import ConfigError, DataError, ModelError
from nfp.inference.scoring import evaluate_model, flat_metrics
from nfp.models.convlstm.model import rollout  # the rollout evaluation and predict use

SIZE = 16


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
    result = evaluate_model(
        affine, clips_ds([whole_frames(0, 255, 255, 0)]), protocol="rollout", context_frames=2, predict_frames=2
    )
    per_frame = result["per_frame"]
    assert per_frame["copy_last"]["mse"] == pytest.approx([0, 64])  # predicts white, white
    assert per_frame["mean_frame"]["mse"] == pytest.approx([16, 16])  # predicts grey 0.5 twice
    assert per_frame["mean_frame"]["mae"] == pytest.approx([32, 32])
    # the model (affine) predicts 0.6, then 0.4: errors 0.4 and 0.4
    assert per_frame["model"]["mse"] == pytest.approx([64 * 0.16, 64 * 0.16], rel=1e-5)
    assert result["scores"]["copy_last"]["mse"] == pytest.approx(32)


def test_one_step_is_teacher_forced_shift_and_baselines_use_frames_seen_so_far():
    result = evaluate_model(
        affine, clips_ds([whole_frames(0, 255, 255)]), protocol="one_step", context_frames=1, predict_frames=1
    )
    assert result["protocol"] == "one_step"
    assert result["frames"] == [1, 2]
    per_frame = result["per_frame"]
    assert per_frame["copy_last"]["mse"] == pytest.approx([64, 0])  # inputs black, white → targets white, white
    assert per_frame["mean_frame"]["mse"] == pytest.approx([64, 16])  # running means 0, 0.5
    # the model sees the TRUE frames: outputs 0.1 and 0.6 (not a rollout)
    assert per_frame["model"]["mse"] == pytest.approx([64 * 0.81, 64 * 0.16], rel=1e-5)


def test_flat_metrics_prefix_the_split_and_name_the_baselines():
    result = evaluate_model(
        affine, clips_ds([whole_frames(0, 255, 255, 0)]), protocol="rollout", context_frames=2, predict_frames=2
    )
    flat = flat_metrics(result, "test")
    assert flat["test_mse"] == result["scores"]["model"]["mse"]
    assert flat["test_baseline_copy_last_mse"] == pytest.approx(32)
    assert {"test_ssim", "test_psnr", "test_mae", "test_baseline_mean_frame_ssim"} <= set(flat)
    assert len(flat) == 12


# --------------------------------------------------------------------------- errors
def test_model_frame_size_incompatible_with_clips_is_a_model_error():
    with pytest.raises(ModelError, match="16×16×1.*8×8×1"):
        evaluate_model(
            tiny_model(), clips_ds([whole_frames(0, 0, 0, 0)]), protocol="rollout", context_frames=2, predict_frames=2
        )


def test_context_not_shorter_than_the_clips_is_a_config_error():
    with pytest.raises(ConfigError, match="evaluate.context_frames: got 4, expected < the clip length 4"):
        evaluate_model(
            affine, clips_ds([whole_frames(0, 0, 0, 0)]), protocol="rollout", context_frames=4, predict_frames=1
        )


def test_empty_dataset_is_a_data_error():
    empty = clips_ds(np.zeros((0, 4, 8, 8)))
    with pytest.raises(DataError, match="empty"):
        evaluate_model(affine, empty, protocol="rollout", context_frames=2, predict_frames=2)
