"""OpenSTL's metric definitions, checked by hand on crafted frames and against scikit-image's SSIM."""

import numpy as np
import pytest

from nfp.inference.metrics import FrameMetrics, frame_metrics, ssim


def _clip(*frames):
    """(1, time, H, W, 1) float32 from (H, W) frames."""
    return np.stack(frames)[None, ..., None].astype(np.float32)


def _blobs(rng, n, size=16):
    """Frames that look like Moving MNIST: dark background, a few bright soft squares."""
    out = np.zeros((n, size, size), np.float32)
    for frame in out:
        for _ in range(2):
            y, x = rng.integers(0, size - 5, 2)
            frame[y : y + 5, x : x + 5] = np.maximum(frame[y : y + 5, x : x + 5], rng.uniform(0.4, 1.0))
    return out


def test_mse_and_mae_are_per_frame_sums_over_pixels_averaged_over_clips():
    zero = np.zeros((8, 8), np.float32)
    truth = np.concatenate([_clip(zero, zero), _clip(zero, zero)])
    one_pixel = zero.copy()
    one_pixel[3, 4] = 1.0
    pred = np.concatenate([_clip(zero + 0.5, one_pixel), _clip(zero, zero)])
    acc = FrameMetrics()
    acc.update(truth, pred)
    curves = acc.per_frame()
    # clip 1: frame 1 errs 0.5 on 64 pixels (sum sq 16, sum abs 32), frame 2 errs 1 on one pixel; clip 2 is perfect
    assert curves["mse"] == pytest.approx([16 / 2, 1 / 2])
    assert curves["mae"] == pytest.approx([32 / 2, 1 / 2])
    assert acc.result()["mse"] == pytest.approx((8 + 0.5) / 2)
    assert acc.clips == 2


def test_psnr_is_20_log10_of_one_over_root_pixel_mse_on_clipped_predictions():
    truth = np.full((8, 8), 0.5, np.float32)
    values = frame_metrics(_clip(truth, truth + 0.5), _clip(truth + 0.1, truth + 1.0))
    assert float(values["psnr"][0, 0]) == pytest.approx(20.0, abs=1e-4)  # pixel mse 0.01
    assert np.isposinf(float(values["psnr"][0, 1]))  # 1.5 clipped to 1.0 is perfect
    assert float(values["mse"][0, 1]) == pytest.approx(64 * 0.25)  # MSE is not clipped


@pytest.mark.parametrize("data_range", [2.0, 1.0])
def test_ssim_matches_skimage_structural_similarity_with_openstl_settings(data_range):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    truth = _blobs(rng, 4)
    pred = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)
    ours = ssim(truth[..., None], pred[..., None], data_range=data_range).numpy()
    # skimage's defaults (7×7 uniform window, sample covariance) are what OpenSTL calls; float32 vs float64
    reference = [structural_similarity(t, p, data_range=data_range) for t, p in zip(truth, pred)]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_colour_ssim_is_per_channel_and_averaged_as_skimage_with_channel_axis_and_errors_sum_over_hwc():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    truth = np.stack([_blobs(rng, 3, size=16)[..., None].repeat(3, -1) * [1.0, 0.6, 0.3]]).astype(np.float32)
    pred = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)  # (1, 3 frames, 16, 16, 3)
    values = frame_metrics(truth, pred)
    reference = [structural_similarity(t, p, data_range=2.0, channel_axis=-1) for t, p in zip(truth[0], pred[0])]
    np.testing.assert_allclose(values["ssim"].numpy()[0], reference, atol=1e-5)
    np.testing.assert_allclose(values["mse"].numpy()[0], ((pred - truth) ** 2).sum(axis=(2, 3, 4))[0], rtol=1e-5)


def test_ssim_default_is_openstls_data_range_2():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    truth, pred = _blobs(rng, 1)[0], _blobs(rng, 1)[0]
    value = frame_metrics(_clip(truth), _clip(pred))["ssim"][0, 0]
    assert float(value) == pytest.approx(structural_similarity(pred, truth, data_range=2.0), abs=1e-5)


def test_ssim_is_computed_on_predictions_clipped_to_unit_range():
    rng = np.random.default_rng(2)
    truth = _blobs(rng, 1)[0]
    pred = truth * 1.8 - 0.3  # out of [0, 1] on both sides
    value = frame_metrics(_clip(truth), _clip(pred))["ssim"][0, 0]
    expected = ssim(truth[..., None], np.clip(pred, 0, 1)[..., None])
    assert float(value) == pytest.approx(float(expected), abs=1e-6)
    assert float(value) != pytest.approx(float(ssim(truth[..., None], pred[..., None])), abs=1e-3)


def test_streaming_over_batches_equals_one_pass_over_all_clips():
    rng = np.random.default_rng(3)
    truth = _blobs(rng, 5 * 3).reshape(5, 3, 16, 16, 1)
    pred = np.clip(truth + rng.normal(0, 0.2, truth.shape), 0, 1).astype(np.float32)
    whole, streamed = FrameMetrics(), FrameMetrics()
    whole.update(truth, pred)
    for start in (0, 2, 4):
        streamed.update(truth[start : start + 2], pred[start : start + 2])
    assert streamed.clips == 5
    for name, curve in whole.per_frame().items():
        np.testing.assert_allclose(streamed.per_frame()[name], curve, rtol=1e-5)


def test_result_without_any_clip_is_an_error():
    with pytest.raises(ValueError, match="no clips"):
        FrameMetrics().result()
