"""Pixels of your own frames made into nfp's: any size → data.frame_size (aspect kept, centre crop), any colour →
data.channels. One place, so videos, frame folders, arrays and `nfp predict --input` give the same frames.

Importable without TensorFlow (numpy and Pillow).
"""

from __future__ import annotations

import numpy as np

# ITU-R 601-2 luma, as Pillow's convert("L"): L = (299 R + 587 G + 114 B) / 1000
_LUMA = np.array([299, 587, 114], np.uint32)


def to_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., H, W, C) with C 1 or 3 → (..., H, W, channels): grey repeated, or RGB to luma."""
    have = frames.shape[-1]
    if have == channels:
        return frames
    if have == 1:
        return np.repeat(frames, channels, axis=-1)
    luma = (frames.astype(np.uint32) @ _LUMA + 500) // 1000
    return luma.astype(np.uint8)[..., None]


def crop_box(height: int, width: int, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred part of a height×width picture with the aspect of frame_hw."""
    h, w = frame_hw
    if width * h > height * w:  # wider than wanted: crop the sides
        keep = round(height * w / h)
        left = (width - keep) // 2
        return left, 0, left + keep, height
    keep = round(width * h / w)
    top = (height - keep) // 2
    return 0, top, width, top + keep


def cover(height: int, width: int, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(scaled height, scaled width, top, left): a height×width picture scaled to cover frame_hw with its aspect
    kept, and where the centred frame starts in it (for decoders that resize themselves: PyAV's swscale)."""
    h, w = frame_hw
    scale = max(h / height, w / width)
    sh, sw = max(h, round(height * scale)), max(w, round(width * scale))
    return sh, sw, (sh - h) // 2, (sw - w) // 2


def fit(picture, frame_hw: tuple[int, int], channels: int) -> np.ndarray:
    """A PIL image or uint8 (H0, W0[, C]) array → uint8 (H, W, channels): centre-cropped to the frame's aspect,
    then resized (bilinear, antialiased when shrinking)."""
    from PIL import Image

    if not isinstance(picture, Image.Image):
        arr = np.asarray(picture)
        picture = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    image = picture
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    h, w = frame_hw
    if image.size != (w, h):
        box = crop_box(image.height, image.width, frame_hw)
        image = image.resize((w, h), Image.Resampling.BILINEAR, box=box)
    arr = np.asarray(image)
    return to_channels(arr[..., None] if arr.ndim == 2 else arr, channels)
