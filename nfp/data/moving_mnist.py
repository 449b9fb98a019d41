"""Moving MNIST generated on the fly, as OpenSTL does it (openstl/datasets/dataloader_moving_mnist.py).

Each digit starts at (x, y) ~ U[0, 1) of the free canvas (image_size − digit_size), moves in
direction θ ~ U[0, 2π) by step_length of the free canvas per frame, is clamped and bounces at the
walls; digits are combined with np.maximum. Frames may be rectangular (H, W): x scales with W, y with H.
All randomness of a split is drawn up front from the split's own stream, so clip i is the same however
the clips are later rendered or sharded.

Colour variant (OpenSTL's "MNIST over CIFAR", offline): `over_photos` lays the grey digits, as white with
their grey value as alpha, over a crop of one of scikit-learn's sample photos that moves and bounces the
same way; backgrounds draw from their own streams, so the grey digits do not change.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from nfp.errors import DataError, first_line

SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=4)
def load_digit_bank(bank: str, digit_size: int) -> np.ndarray:
    """Handwritten digits (n, digit_size, digit_size) uint8 in [0, 255]: "sklearn" (offline) or "mnist" (download).
    Made once per process for each bank and size (prepare, predict's sample clip and the demo videos share it), and
    read-only for that reason."""
    digits = _digit_bank(bank, digit_size)
    digits.setflags(write=False)
    return digits


def _digit_bank(bank: str, digit_size: int) -> np.ndarray:
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
    return _bounce(params.start, params.theta, frames, step_length)


def _bounce(start: np.ndarray, theta: np.ndarray, frames: int, step_length: float) -> np.ndarray:
    """Positions (..., frames, 2) = (x, y) in [0, 1] from start (..., 2) and direction theta (...)."""
    pos = start.copy()  # (..., 2) = (x, y)
    vel = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    out = np.empty(pos.shape[:-1] + (frames, 2))
    for t in range(frames):  # OpenSTL moves first, then records: frame 0 is one step from the start
        pos += vel * step_length
        low, high = pos <= 0, pos >= 1.0
        pos = np.clip(pos, 0.0, 1.0)
        vel = np.where(low | high, -vel, vel)
        out[..., t, :] = pos
    return out


def _frame_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def render(
    params: ClipParams, bank: np.ndarray, *, frames: int, image_size: int | tuple[int, int], step_length: float
) -> np.ndarray:
    """Clips (n, frames, H, W) uint8 for the given per-clip draws; image_size is an int (square) or (H, W)."""
    d = bank.shape[1]
    h, w = _frame_hw(image_size)
    if h < d or w < d:
        raise DataError(f"data.image_size: frame {h}x{w} is smaller than the {d}px digits")
    free = np.array([w - d, h - d], np.float64)  # corners are (x, y)
    corners = (trajectories(params, frames, step_length) * free).astype(np.int32)
    clips = np.zeros((len(params), frames, h, w), np.uint8)
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
    image_size: int | tuple[int, int],
    digits_per_clip: int = 2,
    step_length: float = 0.1,
) -> np.ndarray:
    """n clips (n, frames, H, W) uint8 of one split, deterministic for (seed, split); image_size int or (H, W)."""
    params = draw_params(split_streams(seed)[split], n, digits_per_clip, len(bank))
    return render(params, bank, frames=frames, image_size=image_size, step_length=step_length)


def load_photos(frame_size: tuple[int, int]) -> np.ndarray:
    """scikit-learn's sample photos (k, Hp, Wp, 3) uint8, shorter side about 2x the frame's longer side."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    h, w = frame_size
    out = []
    for photo in load_sample_images().images:
        ph, pw = photo.shape[:2]
        scale = 2 * max(h, w) / min(ph, pw)  # a crop shows part of the photo and has room to move
        size = (max(w, round(pw * scale)), max(h, round(ph * scale)))  # PIL sizes are (W, H)
        out.append(np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR)))
    return np.stack(out)


@dataclass(frozen=True)
class BackgroundParams:
    """Per-clip background draws of one split: photo (n,) index, start (n, 2) in [0,1), theta (n,)."""

    photo: np.ndarray
    start: np.ndarray
    theta: np.ndarray

    def __len__(self) -> int:
        return len(self.theta)

    def __getitem__(self, s: slice) -> BackgroundParams:
        return BackgroundParams(self.photo[s], self.start[s], self.theta[s])


def draw_backgrounds(seed: int, split: str, n: int, photo_count: int) -> BackgroundParams:
    """Draw photo, start and direction of n clips' backgrounds from the split's own background stream."""
    if split not in SPLITS:
        raise DataError(f"split: got {split!r}, expected one of {', '.join(SPLITS)}")
    # A stream apart from split_streams, so drawing backgrounds leaves the digits' draws untouched.
    child = np.random.SeedSequence([seed, 1]).spawn(len(SPLITS))[SPLITS.index(split)]
    u = np.random.default_rng(child).random((n, 4))
    return BackgroundParams(
        photo=np.minimum((u[:, 3] * photo_count).astype(np.int64), photo_count - 1),
        start=u[:, :2],
        theta=u[:, 2] * 2 * np.pi,
    )


def over_photos(
    clips: np.ndarray, backgrounds: BackgroundParams, photos: np.ndarray, *, step_length: float
) -> np.ndarray:
    """Grey clips (n, T, H, W) uint8 over moving photo crops -> (n, T, H, W, 3) uint8, digits white with alpha."""
    n, frames, h, w = clips.shape
    hp, wp = photos.shape[1:3]
    if hp < h or wp < w:
        raise DataError(f"photos {hp}x{wp} are smaller than the {h}x{w} frames")
    if len(backgrounds) != n:
        raise DataError(f"got {len(backgrounds)} backgrounds for {n} clips")
    free = np.array([wp - w, hp - h], np.float64)
    corners = (_bounce(backgrounds.start, backgrounds.theta, frames, step_length / 2) * free).astype(np.int64)
    # Every (h, w) window of every photo as a view (k, Hp-h+1, Wp-w+1, h, w, 3): a crop is one gather.
    s = photos.strides
    windows = np.lib.stride_tricks.as_strided(
        photos, (len(photos), hp - h + 1, wp - w + 1, h, w, 3), (s[0], s[1], s[2], s[1], s[2], s[3]), writeable=False
    )
    out = np.empty((n, frames, h, w, 3), np.uint8)
    chunk = 8  # a few clips at a time keeps the float32 temporaries in cache
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        bg = windows[backgrounds.photo[sl, None], corners[sl, :, 1], corners[sl, :, 0]].astype(np.float32)
        a = clips[sl, ..., None].astype(np.float32) / np.float32(255)
        bg *= 1 - a
        bg += np.float32(255) * a
        out[sl] = np.rint(bg, out=bg)
    return out


def dressed(clips: np.ndarray, *, channels: int, backgrounds: BackgroundParams | None = None, photos=None,
            step_length: float = 0.1) -> np.ndarray:  # fmt: skip
    """Grey clips (n, T, H, W) → (n, T, H, W, channels): over their photo backgrounds when given (data.background:
    photos), in grey or RGB as data.channels says."""
    from nfp.data.images import to_channels

    coloured = (
        clips[..., None] if backgrounds is None else over_photos(clips, backgrounds, photos, step_length=step_length)
    )
    return to_channels(coloured, channels)
