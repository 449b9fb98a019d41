"""Benchmark metrics as OpenSTL computes them (openstl/core/metrics.py), streamed batch by batch.

Frames are (batch, time, H, W, C) float in [0, 1]. For each (clip, frame):
- mse: the SUM over H×W×C of squared errors (per-pixel MSE × H·W·C, so ×4096 at 64×64); mae likewise.
- psnr: 20·log10(1/√mse_pixel) (tf.image.psnr, max_val=1) on predictions clipped to [0, 1];
  a perfect frame scores +inf, as in OpenSTL.
- ssim: on predictions clipped to [0, 1], what OpenSTL gets from skimage's structural_similarity
  with its defaults: a 7×7 uniform window, sample covariance (×49/48), K1=0.01, K2=0.03, and —
  because OpenSTL passes float images without data_range (a call only older skimage accepts,
  `multichannel=True`) — data_range=2, older skimage's guess for floats (today's refuses to guess).
  tf.image.ssim is a different SSIM (11×11 Gaussian, σ=1.5, population covariance, data_range=max_val:
  Wang et al. 2004) that gives other numbers on the same frames (±0.03 on noisy 16×16 frames), so SSIM
  is built here from tf.nn.avg_pool2d instead.
Each metric is averaged over clips per frame (the curve vs. horizon), then over frames (the
number OpenSTL reports: equal to its mean over clips and frames).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

NAMES = ("mse", "mae", "ssim", "psnr")
SSIM_WINDOW = 7  # skimage's default uniform window
SSIM_DATA_RANGE = 2.0  # what skimage guessed for float images when OpenSTL's numbers were made


def ssim(truth, pred, *, data_range: float = SSIM_DATA_RANGE, win_size: int = SSIM_WINDOW) -> tf.Tensor:
    """SSIM per image, skimage-default style: (..., H, W, C) float → (...) float32; no clipping here."""
    truth, pred = tf.convert_to_tensor(truth, tf.float32), tf.convert_to_tensor(pred, tf.float32)
    lead = tf.shape(truth)[:-3]
    x = tf.reshape(truth, tf.concat([[-1], tf.shape(truth)[-3:]], 0))
    y = tf.reshape(pred, tf.concat([[-1], tf.shape(pred)[-3:]], 0))

    def mean(z):  # 'VALID' pooling = skimage's filter then crop of the (win-1)/2 border
        return tf.nn.avg_pool2d(z, win_size, 1, "VALID")

    n = float(win_size * win_size)
    cov_norm = n / (n - 1.0)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return tf.reshape(tf.reduce_mean(s, axis=[1, 2, 3]), lead)


@tf.function(reduce_retracing=True)
def frame_metrics(truth, pred) -> dict[str, tf.Tensor]:
    """(batch, time, H, W, C) float in [0, 1] → {name: (batch, time) float32} per clip and frame."""
    truth, pred = tf.cast(truth, tf.float32), tf.cast(pred, tf.float32)
    err = pred - truth
    clipped = tf.clip_by_value(pred, 0.0, 1.0)  # OpenSTL clips before SSIM and PSNR only
    return {
        "mse": tf.reduce_sum(tf.square(err), axis=[2, 3, 4]),
        "mae": tf.reduce_sum(tf.abs(err), axis=[2, 3, 4]),
        "ssim": ssim(truth, clipped),
        "psnr": tf.image.psnr(clipped, truth, max_val=1.0),
    }


class FrameMetrics:
    """Running per-frame sums over clips: memory O(frames), whatever the number of clips."""

    def __init__(self):
        self.clips = 0
        self._sums: dict[str, np.ndarray] = {}

    def update(self, truth, pred) -> None:
        """Add a batch: truth and pred (batch, time, H, W, C) float in [0, 1]."""
        values = frame_metrics(truth, pred)
        for name in NAMES:
            batch_sum = np.sum(values[name].numpy().astype(np.float64), axis=0)
            self._sums[name] = self._sums.get(name, 0.0) + batch_sum
        self.clips += int(values["mse"].shape[0])

    def per_frame(self) -> dict[str, list[float]]:
        """{name: [mean over clips of frame 1, frame 2, …]}, the metric vs. horizon."""
        if not self.clips:
            raise ValueError("no clips were added")
        return {name: (self._sums[name] / self.clips).tolist() for name in NAMES}

    def result(self) -> dict[str, float]:
        """{name: mean over clips and frames} — OpenSTL's numbers."""
        return {name: float(np.mean(curve)) for name, curve in self.per_frame().items()}
