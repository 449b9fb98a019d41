"""Moving MNIST generated on the fly, as OpenSTL does it (openstl/datasets/dataloader_moving_mnist.py).

Each digit starts at (x, y) ~ U[0, 1) of the free canvas (image_size − digit_size), moves in
direction θ ~ U[0, 2π) by step_length of the free canvas per frame, is clamped and bounces at the
walls; digits are combined with np.maximum. All randomness of a split is drawn up front from the
split's own stream, so clip i is the same however the clips are later rendered or sharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfp.errors import DataError, first_line

SPLITS = ("train", "val", "test")


def load_digit_bank(bank: str, digit_size: int) -> np.ndarray:
    """Handwritten digits (n, digit_size, digit_size) uint8 in [0, 255]: "sklearn" (offline) or "mnist" (download)."""
    if bank == "sklearn":
        from sklearn.datasets import load_digits

        images = (load_digits().images * (255.0 / 16.0)).astype(np.uint8)  # 8×8, values 0..16
        # MNIST digits fill the inner 20 of 28 px: upscale to that share and pad, so the look matches.
        inner = max(1, round(digit_size * 20 / 28))
        return _pad_to(_resize(images, inner), digit_size)
    if bank == "mnist":
        import keras

        try:
            (images, _), _ = keras.datasets.mnist.load_data()
        except Exception as err:  # keras raises plain Exception/URLError when offline
            raise DataError(
                f"data.digit_bank=mnist: cannot download MNIST through keras.datasets ({type(err).__name__}: "
                f"{first_line(err)}); use data.digit_bank=sklearn offline"
            ) from err
        return images if digit_size == 28 else _resize(images, digit_size)
    raise DataError(f"data.digit_bank: got {bank!r}, expected sklearn or mnist")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def _pad_to(images: np.ndarray, size: int) -> np.ndarray:
    lo = (size - images.shape[1]) // 2
    hi = size - images.shape[1] - lo
    return np.pad(images, ((0, 0), (lo, hi), (lo, hi)))


@dataclass(frozen=True)
class ClipParams:
    """Per-clip random draws of one split: start (n, digits, 2) in [0,1), theta (n, digits), digit (n, digits)."""

    start: np.ndarray
    theta: np.ndarray
    digit: np.ndarray

    def __len__(self) -> int:
        return len(self.theta)

    def __getitem__(self, s: slice) -> ClipParams:
        return ClipParams(self.start[s], self.theta[s], self.digit[s])


def split_streams(seed: int) -> dict[str, np.random.Generator]:
    """One independent random stream per split, derived from the seed."""
    children = np.random.SeedSequence(seed).spawn(len(SPLITS))
    return {name: np.random.default_rng(child) for name, child in zip(SPLITS, children)}


def draw_params(rng: np.random.Generator, n: int, digits_per_clip: int, bank_size: int) -> ClipParams:
    """Draw starts, directions and digit indices of n clips (cheap: 4 numbers per digit)."""
    u = rng.random((n, digits_per_clip, 4))
    return ClipParams(
        start=u[..., :2],
        theta=u[..., 2] * 2 * np.pi,
        digit=np.minimum((u[..., 3] * bank_size).astype(np.int64), bank_size - 1),
    )


def trajectories(params: ClipParams, frames: int, step_length: float) -> np.ndarray:
    """Top-left corners (n, digits, frames, 2) as fractions of the free canvas, OpenSTL's bounce rule."""
    pos = params.start.copy()  # (..., 2) = (x, y)
    vel = np.stack([np.cos(params.theta), np.sin(params.theta)], axis=-1)
    out = np.empty(pos.shape[:-1] + (frames, 2))
    for t in range(frames):  # OpenSTL moves first, then records: frame 0 is one step from the start
        pos += vel * step_length
        low, high = pos <= 0, pos >= 1.0
        pos = np.clip(pos, 0.0, 1.0)
        vel = np.where(low | high, -vel, vel)
        out[..., t, :] = pos
    return out


def render(params: ClipParams, bank: np.ndarray, *, frames: int, image_size: int, step_length: float) -> np.ndarray:
    """Clips (n, frames, image_size, image_size) uint8 for the given per-clip draws."""
    d = bank.shape[1]
    corners = (trajectories(params, frames, step_length) * (image_size - d)).astype(np.int32)
    clips = np.zeros((len(params), frames, image_size, image_size), np.uint8)
    for i in range(len(params)):
        for k in range(params.digit.shape[1]):
            digit = bank[params.digit[i, k]]
            for t in range(frames):
                x, y = corners[i, k, t]
                patch = clips[i, t, y : y + d, x : x + d]
                np.maximum(patch, digit, out=patch)
    return clips


def generate(
    n: int,
    *,
    seed: int,
    split: str = "train",
    bank: np.ndarray,
    frames: int,
    image_size: int,
    digits_per_clip: int = 2,
    step_length: float = 0.1,
) -> np.ndarray:
    """n clips (n, frames, image_size, image_size) uint8 of one split, deterministic for (seed, split)."""
    params = draw_params(split_streams(seed)[split], n, digits_per_clip, len(bank))
    return render(params, bank, frames=frames, image_size=image_size, step_length=step_length)
