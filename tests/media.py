"""Real media files for the tests: videos written with PyAV (FFmpeg's encoders), frame folders with Pillow, of
moving shapes, so a next-frame model has something to learn and every source reads what a camera would write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfp.data.demo import write_video  # noqa: F401 - the tests write videos as nfp demo-videos does


def moving_shapes(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(frames, H, W, 3) uint8: a coloured square and disc moving over a gradient, bouncing off the walls."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), np.full_like(xx, 60)], -1)
    out = np.empty((frames, height, width, 3), np.uint8)
    pos = rng.random((2, 2)) * [height * 0.6, width * 0.6]
    vel = (rng.random((2, 2)) - 0.5) * [height * 0.2, width * 0.2]
    colours = rng.integers(80, 256, (2, 3))
    size = max(2, min(height, width) // 5)
    for t in range(frames):
        frame = background.copy()
        y, x = pos[0].astype(int)
        frame[y : y + size, x : x + size] = colours[0]
        cy, cx = pos[1] + size / 2
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 2) ** 2] = colours[1]
        out[t] = frame
        pos += vel
        for i in range(2):
            for axis, limit in ((0, height - size), (1, width - size)):
                if not 0 <= pos[i, axis] <= limit:
                    vel[i, axis] *= -1
                    pos[i, axis] = np.clip(pos[i, axis], 0, limit)
    return out


def write_frames(folder: str | Path, frames: np.ndarray, *, suffix: str = ".png", mode: str | None = None) -> Path:
    """One image per frame, named f0, f1, …, f10 (natural order is not text order)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        image = Image.fromarray(frame)
        if mode:
            image = image.convert(mode)
        image.save(folder / f"f{t}{suffix}")
    return folder


def decode_all(path: str | Path, frame_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Every frame of a video, (T, H, W, 3) uint8, decoded plainly from the start (the reference for seeking);
    with frame_hw, scaled to cover it and centre-cropped as nfp's video source does (swscale, area-averaging)."""
    import av

    from nfp.data.images import cover

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame_hw is None:
                frames.append(frame.to_ndarray(format="rgb24"))
                continue
            sh, sw, top, left = cover(frame.height, frame.width, frame_hw)
            rgb = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="AREA")
            frames.append(rgb[top : top + frame_hw[0], left : left + frame_hw[1]])
    return np.stack(frames)
