"""A look at the prepared clips before training: rows of consecutive frames per split (PNG) and one clip as a GIF.

`nfp prepare` writes preview.png and preview.gif next to the manifest; `nfp train` logs them to
its run; `nfp preview` renders any split and clip count. Clips are the first of each split, so a
rerun draws the same picture, byte for byte.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

from nfp import storage, visualize
from nfp.config import DataConfig
from nfp.data.manifest import Manifest
from nfp.errors import ConfigError

PNG, GIF = "preview.png", "preview.gif"
CLIPS = 3  # per split, by default


def write(out_dir: str, clips: dict[str, np.ndarray]) -> dict[str, str]:
    """Render {split: uint8 clips (n, T, H, W)} into out_dir (local or remote), atomically; → {"png", "gif"} paths.

    The PNG has a row per clip, labelled "split #index"; the GIF plays the first clip."""
    rows = [(f"{split} #{i}", clip) for split, split_clips in clips.items() for i, clip in enumerate(split_clips)]
    scale = visualize.frame_scale(rows[0][1].shape[1])
    with tempfile.TemporaryDirectory(prefix="nfp-preview-") as tmp:
        gif = visualize.write_gif(rows[0][1], Path(tmp, GIF), scale=scale).read_bytes()
    paths = {"png": storage.join(out_dir, PNG), "gif": storage.join(out_dir, GIF)}
    storage.makedirs(out_dir)
    storage.write_bytes(paths["png"], _png_bytes(visualize.labelled_rows(rows, scale)))
    storage.write_bytes(paths["gif"], gif)
    return paths


def from_shards(data_cfg: DataConfig, manifest: Manifest, splits: list[str] | None = None, clips: int = CLIPS) -> dict:
    """{split: its first `clips` clips} read back from the shards (default: every split that has clips)."""
    from nfp.data.pipeline import read_clips

    splits = splits or [s for s in manifest.splits if manifest.count(s)]
    return {split: read_clips(data_cfg, manifest, split, clips) for split in splits}


def check_has_clips(manifest: Manifest, splits: list[str] | None) -> None:
    for split in splits or ():
        if not manifest.count(split):
            raise ConfigError(f"--split: split {split!r} of {manifest.dir} has no clips (see data.split)")


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()
