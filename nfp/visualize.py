"""Pictures people look at: prediction strips, side-by-side GIFs, loss/LR curves.

Frames come in as (time, H, W) or (time, H, W, C) arrays, C 1 (grey) or 3 (RGB), in [0, 1] (float) or uint8;
pictures are grey when every frame in them is, RGB otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_GAP = 2  # pixels between frames and rows


def to_uint8(frames) -> np.ndarray:
    """(time, H, W[, C]) float in [0, 1] or uint8 → (time, H, W) uint8 when grey, (time, H, W, 3) when RGB."""
    arr = np.asarray(frames)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


MIN_FRAME_PX = 64  # smaller frames are drawn scaled up by a whole factor to at least this
LABEL_PX = 64  # the column that names each row
ROW_FRAMES = 10  # longer rows wrap
THUMBNAIL_PX = 256  # MLflow's UI shows a logged image as a thumbnail at most this big (mlflow.tracking.multimedia)


def frame_scale(frame_px: int) -> int:
    """The whole factor that brings a frame to at least MIN_FRAME_PX pixels (nearest neighbour: no blur)."""
    return max(1, -(-MIN_FRAME_PX // frame_px))


def labelled_rows(rows: list[tuple[str, np.ndarray]], scale: int, *, wrap: int | None = None) -> np.ndarray:
    """(label, (T, H, W) frames) rows → one (H', W') uint8 image: a label column, then each row's frames left to
    right, scaled `scale`×; rows longer than `wrap` frames continue on the next line, labelled "(cont.)"."""
    from PIL import Image, ImageDraw

    rows = [(label, to_uint8(frames)) for label, frames in rows]
    colour = any(frames.ndim == 4 for _, frames in rows)
    lines = []
    for label, frames in rows:
        frames = _rgb(frames) if colour else frames
        step = wrap or len(frames)
        for start in range(0, len(frames), step):
            lines.append((label if start == 0 else "(cont.)", frames[start : start + step]))
    h, w = lines[0][1].shape[1:3]
    fh, fw = h * scale, w * scale
    width = LABEL_PX + max(len(f) for _, f in lines) * (fw + _GAP) - _GAP
    image = np.full((len(lines) * (fh + _GAP) - _GAP, width, *(3,) * colour), 255, np.uint8)
    for r, (_, frames) in enumerate(lines):
        top = r * (fh + _GAP)
        big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
        for t, frame in enumerate(big):
            left = LABEL_PX + t * (fw + _GAP)
            image[top : top + fh, left : left + fw] = frame
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for r, (label, _) in enumerate(lines):
        draw.text((4, r * (fh + _GAP) + fh // 2 - 5), label, fill=(0, 0, 0) if colour else 0)
    return np.asarray(canvas)


def _rgb(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (…, H, W) grey or (…, H, W, 3) → (…, H, W, 3)."""
    return frames if frames.shape[-1:] == (3,) and frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=-1)


def squarest_wrap(lengths: list[int], frame_px: int, scale: int) -> int:
    """The row length (in frames) at which `labelled_rows` of rows this long comes out closest to square: MLflow's
    square thumbnail then draws its frames largest."""
    pitch = frame_px * scale + _GAP

    def longest_side(wrap: int) -> int:
        lines = sum(-(-n // wrap) for n in lengths)
        return max(LABEL_PX + wrap * pitch - _GAP, lines * pitch - _GAP)

    return min(range(1, max(lengths) + 1), key=longest_side)


def side_by_side_frames(truth, prediction) -> np.ndarray:
    """(time, H, 2W+gap[, 3]) uint8: ground truth left, prediction right, frame by frame."""
    truth, prediction = to_uint8(truth), to_uint8(prediction)
    if truth.ndim != prediction.ndim:
        truth, prediction = _rgb(truth), _rgb(prediction)
    gap = np.full((*truth.shape[:2], _GAP, *truth.shape[3:]), 128, np.uint8)
    return np.concatenate([truth, gap, prediction], axis=2)


def write_gif(frames, path: str | Path, *, fps: float = 4.0, scale: int = 2) -> Path:
    """Write (time, H, W[, C]) frames as a looping GIF (each frame scaled up `scale`×; RGB on an adaptive palette)."""
    from PIL import Image

    frames = _with_progress_bar(to_uint8(frames))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f) for f in frames]  # L or RGB, from the shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
    return path


def _with_progress_bar(frames: np.ndarray) -> np.ndarray:
    """Append a 2-px bar filling left to right with time; it also keeps Pillow from merging identical frames."""
    t, _, w = frames.shape[:3]
    bar = np.zeros((t, 2, w, *frames.shape[3:]), np.uint8)
    for i in range(t):
        bar[i, :, : max(1, round(w * (i + 1) / t))] = 255
    return np.concatenate([frames, bar], axis=1)


def write_png(image: np.ndarray, path: str | Path, *, scale: int = 2) -> Path:
    """Write an (H, W) or (H, W, 3) uint8 image as PNG, scaled up `scale`×."""
    from PIL import Image

    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def history_figure(history: dict[str, list[float]]):
    """Loss curves (train/val, log scale) and the learning rate per epoch, as a matplotlib Figure."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_lr = fig.subplots(1, 2)
    for key in sorted(history):
        if key.endswith("loss"):
            values = history[key]
            ax_loss.plot(range(1, len(values) + 1), values, marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    if any(min(v) > 0 for k, v in history.items() if k.endswith("loss") and v):
        ax_loss.set_yscale("log")
    ax_loss.legend()
    lr_key = next((k for k in ("learning_rate", "lr") if k in history), None)
    if lr_key:
        ax_lr.plot(range(1, len(history[lr_key]) + 1), history[lr_key], marker="o", color="tab:green")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    return fig
