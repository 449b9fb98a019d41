"""The plan of a prepare: clips per split, shards per split, clips per chunk, and whether it all fits this
machine's memory and disk, decided before anything is made."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from nfp import storage
from nfp.config import DataConfig
from nfp.data import preview
from nfp.data.manifest import SHARD_NAME
from nfp.data.moving_mnist import SPLITS
from nfp.errors import DataError

_CHUNK = 256  # clips rendered/read at a time: bounds memory whatever the shard size


_CHUNK_BYTES = 64 << 20  # … and at most this many bytes of them (128×128×3 clips are 1 MB each)


_MIN_SHARD_MB = 10  # TF guidance: shards of at least 10 MB (ideally 100 MB)


def split_counts(data_cfg: DataConfig, available: int) -> dict[str, int]:
    """Clips per split from fractions (rounded, rest to train) or counts (summing to <= available)."""
    s = data_cfg.split
    wanted = {"train": s.train, "val": s.val, "test": s.test}
    if s.are_counts():
        counts = {k: int(v) for k, v in wanted.items()}
        if sum(counts.values()) > available:
            raise DataError(
                f"data.split: counts sum to {sum(counts.values())}, but only {available} clips are available"
            )
        return counts
    counts = {k: round(available * wanted[k]) for k in ("val", "test")}
    counts["train"] = available - counts["val"] - counts["test"]
    if counts["train"] <= 0:
        raise DataError(f"data.split: leaves no training clips out of {available}")
    return {k: counts[k] for k in SPLITS}


def shard_counts(data_cfg: DataConfig, counts: dict[str, int], clip_bytes: int) -> dict[str, int]:
    """Shards per split: train from data.num_shards, else from data.shard_mb / num_workers; others proportional."""
    train = counts["train"]
    if data_cfg.num_shards > 0:
        n = data_cfg.num_shards
        if n > train:
            raise DataError(
                f"data.num_shards: got {n} shards for {train} training clips, expected at most one shard per clip"
            )
    else:
        mb = train * clip_bytes / 1e6
        n = max(math.ceil(mb / data_cfg.shard_mb), 10 * data_cfg.num_workers)  # >= 10 files per reading host
        n = min(n, max(data_cfg.num_workers, math.floor(mb / _MIN_SHARD_MB)))  # but >= 10 MB each where data allows
        n = max(1, min(n, train))
    out = {"train": n}
    for split in SPLITS[1:]:
        out[split] = min(counts[split], max(1, round(n * counts[split] / train))) if counts[split] else 0
    return out


def shard_name(split: str, index: int, total: int, compression: str) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord" + (".gz" if compression == "gzip" else "")


CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")  # a container's limit ("max": none)


def memory_bytes() -> int | None:
    """The memory this process may use: the machine's physical memory, or its container's limit where lower
    (cgroup v2 memory.max); None where the OS does not say."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = CGROUP_MEMORY_MAX.read_text().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


def check_fits(data_cfg: DataConfig, counts: dict[str, int], clip_shape, per_clip: int) -> None:
    """DataError naming the keys to lower when prepare could not hold what it allocates in this machine's memory,
    or (local data.dir, no compression) its shards could not fit on the disk: before anything is allocated or
    written."""
    clips, clip_bytes = sum(counts.values()), math.prod(clip_shape)
    frame_key = data_cfg.frame_hw_key[0]  # data.frame_size where set, else data.image_size
    shape = shape_text(clip_shape)
    # At once: `per_clip` bytes for every clip, a chunk of clips rendered or read plus its copy, and the preview's
    # clips of every split with their RGB picture.
    parts = {
        "data.num_clips": clips * per_clip,
        f"{frame_key}, data.frames": (2 * min(chunk(clip_shape), max(counts.values())) + 4 * 3 * preview.CLIPS)
        * clip_bytes,
    }
    need, have = sum(parts.values()), memory_bytes()
    if have is not None and need > have:
        keys = " or ".join(k for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= need / 10)
        raise DataError(
            f"{keys}: preparing {clips} clips of {shape} would take about {size_text(need)} of memory at once, "
            f"this machine has {size_text(have)}; lower {keys}"
        )
    if not storage.is_local(data_cfg.dir) or data_cfg.compression != "none":
        return
    disk = clips * (clip_bytes + 16)  # TFRecord framing: length, two CRCs
    existing = storage.local_path(data_cfg.dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if existing.is_dir():  # shards already there may be kept
        free += sum(p.stat().st_size for p in existing.iterdir() if SHARD_NAME.match(p.name) and p.is_file())
    if disk > free:
        raise DataError(
            f"data.num_clips, {frame_key}, data.frames: {clips} clips of {shape} take {size_text(disk)} of shards, "
            f"{existing} has {size_text(free)} free; lower them, use data.compression=gzip or another data.dir"
        )


def chunk(clip_shape) -> int:
    """Clips rendered or read at a time."""
    return max(1, min(_CHUNK, _CHUNK_BYTES // math.prod(clip_shape)))


def size_text(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def shape_text(clip_shape) -> str:
    """6×16×16 for grey clips, 6×16×16×3 for colour."""
    shape = list(clip_shape)
    return "×".join(map(str, shape[:3] if shape[3:] == [1] else shape))
