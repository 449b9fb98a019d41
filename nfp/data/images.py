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


def what_becomes_of(mode: str) -> str:
    """How `eight_bit` makes a picture of Pillow's `mode` nfp's: said once per mode while indexing."""
    if mode.startswith("I;16") or mode == "I":
        return "scaled from 16 bits to 8 (0..65535 → 0..255)"
    if mode == "F":
        return "scaled from floats to 8 bits (0..1 → 0..255)"
    return "converted to RGB"


def eight_bit(image):
    """A PIL image of any depth Pillow reads → 8 bits per channel (L or RGB). 16-bit integers are scaled from
    0..65535 (a 16-bit PNG, mode I;16), 32-bit integers too where they hold 16-bit values (mode I), floats from 0..1
    (mode F, a float TIFF); other modes (palette, alpha, CMYK, 1-bit) converted to RGB. ValueError (one line: the
    values found and what is expected) for integers outside 0..65535 or floats outside 0..1."""
    from PIL import Image

    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"{mode} pixels from {values.min()} to {values.max()}, expected 8- or 16-bit values (0..65535)"
            )
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    if mode == "F":
        values = np.asarray(image, np.float64)
        if not np.isfinite(values).all():
            raise ValueError("float pixels with NaN or infinity, expected values from 0 to 1")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(f"float pixels from {values.min():g} to {values.max():g}, expected values from 0 to 1")
        return Image.fromarray((values * 255 + 0.5).astype(np.uint8), "L")
    return image.convert("RGB")


def fit(picture, frame_hw: tuple[int, int], channels: int) -> np.ndarray:
    """A PIL image or uint8 (H0, W0[, C]) array → uint8 (H, W, channels): centre-cropped to the frame's aspect,
    then resized (bilinear, antialiased when shrinking)."""
    from PIL import Image

    if not isinstance(picture, Image.Image):
        arr = np.asarray(picture)
        picture = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    image = eight_bit(picture)
    h, w = frame_hw
    if image.size != (w, h):
        box = crop_box(image.height, image.width, frame_hw)
        image = image.resize((w, h), Image.Resampling.BILINEAR, box=box)
    arr = np.asarray(image)
    return to_channels(arr[..., None] if arr.ndim == 2 else arr, channels)
