"""Demo videos, written offline: Moving MNIST digits over moving crops of scikit-learn's colour photos, encoded as
mp4 files with PyAV, so `data.source: video` (configs/videos.yaml) can be tried without your own footage.

`nfp demo-videos --out DIR` writes them; the tests write theirs through `write_video` too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CODECS = {".mp4": "mpeg4", ".avi": "mpeg4", ".mkv": "mpeg4", ".mov": "mpeg4", ".webm": "libvpx-vp9"}


def write_video(path: str | Path, frames: np.ndarray, *, fps: int = 10, codec: str | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 frames (H, W even) into a video file, its codec from the suffix by default; written
    under a temporary name, then renamed: a killed write leaves no half video."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or CODECS[path.suffix.lower()]
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.options = {"g": "8", **({"speed": "8"} if codec == "libvpx-vp9" else {})}  # a keyframe every 8
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def demo_name(index: int) -> str:
    return f"demo_{index:03d}.mp4"


def others_there(out_dir: str | Path, written: list[Path]) -> list[str]:
    """Demo videos in `out_dir` that this run did not write (an earlier run's, with more videos): data.path would
    read them too."""
    folder, mine = Path(out_dir), {p.name for p in written}
    return sorted(p.name for p in folder.glob("demo_*.mp4") if p.name not in mine)


def write_demo_videos(out_dir: str | Path, data_cfg, *, videos: int, frames: int, progress: bool = True) -> list[Path]:
    """`videos` mp4 files of `frames` frames of data.frame_size (RGB), digits over photos, seeded by data.seed,
    `demo_000.mp4`…; each written again when already there (another length or size must not stay)."""
    from tqdm.auto import tqdm

    from nfp.data import moving_mnist as mm

    h, w = data_cfg.frame_hw
    digit = max(8, min(h, w) // 3)
    bank = mm.load_digit_bank("sklearn", digit)
    photos = mm.load_photos((h, w))
    params = mm.draw_params(mm.split_streams(data_cfg.seed)["train"], videos, 2, len(bank))
    backgrounds = mm.draw_backgrounds(data_cfg.seed, "train", videos, len(photos))
    paths = []
    for i in tqdm(range(videos), unit="video", desc=f"demo videos → {out_dir}", disable=not progress):
        path = Path(out_dir, demo_name(i))
        grey = mm.render(params[i : i + 1], bank, frames=frames, image_size=(h, w), step_length=0.05)
        write_video(path, mm.over_photos(grey, backgrounds[i : i + 1], photos, step_length=0.05)[0])
        paths.append(path)
    return paths
