"""Moving MNIST (generated or downloaded) → train/val/test → sharded TFRecords + manifest.json.

One record per clip: its raw uint8 bytes, C order (T, H, W); shape and dtype are in the manifest. (No
tf.train.Example: parsing one cost ~20–40 CPU µs per 64×64 clip, up to a fifth of the pipeline.) Shards are
named `train-00000-of-00010.tfrecord[.gz]`; the manifest, written last, lists per shard its
record count, size and sha256, and is the only entry point readers use. preview.png/.gif, a look
at each split's first clips, go beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nfp import storage
from nfp.config import DataConfig
from nfp.data import preview
from nfp.data.manifest import FORMAT_VERSION, RECORD, SHARD_NAME, Manifest, load_manifest
from nfp.data.moving_mnist import SPLITS
from nfp.errors import DataError, first_line, redact

_CHUNK = 256  # clips rendered/read at a time: bounds memory whatever the shard size
_MIN_SHARD_MB = 10  # TF guidance: shards of at least 10 MB (ideally 100 MB)


def ensure_prepared(data_cfg: DataConfig) -> Manifest:
    """The existing manifest when it was prepared from this config, else prepare it now: one manifest read either way."""
    storage.check_credentials(data_cfg.dir, data_cfg.url if data_cfg.source == "download" else "")
    existing = _existing_manifest(data_cfg.dir)
    if existing is None or existing.content.get("config") != content_config(data_cfg):
        return _write(data_cfg, existing, progress=True)
    if not storage.exists(storage.join(data_cfg.dir, preview.PNG)):  # prepared before previews existed
        preview.write(data_cfg.dir, preview.from_shards(data_cfg, existing))
    return existing


def content_config(data_cfg: DataConfig) -> dict:
    """The config keys that determine the shards' bytes (compared to reuse a prepared dir)."""
    keys = [
        "source",
        "num_clips",
        "frames",
        "image_size",
        "seed",
        "num_shards",
        "shard_mb",
        "num_workers",
        "compression",
    ]
    keys += (
        ["url", "sha256"]
        if data_cfg.source == "download"
        else ["digit_bank", "digit_size", "digits_per_clip", "step_length"]
    )
    out = {k: getattr(data_cfg, k) for k in keys}
    out["split"] = dataclasses.asdict(data_cfg.split)
    return out


# --------------------------------------------------------------------------- plan
def split_counts(data_cfg: DataConfig, available: int) -> dict[str, int]:
    """Clips per split from fractions (rounded, rest to train) or counts (summing to <= available)."""
    s = data_cfg.split
    wanted = {"train": s.train, "val": s.val, "test": s.test}
    if any(v > 1 for v in wanted.values()):
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


# --------------------------------------------------------------------------- sources
@dataclasses.dataclass
class _Source:
    info: dict  # what the manifest records about where the clips came from
    counts: dict[str, int]
    clip_shape: tuple[int, int, int]
    read: Callable[[str, int, int], np.ndarray]  # (split, start, stop) -> uint8 (n, T, H, W)


def _generated(data_cfg: DataConfig) -> _Source:
    from nfp.data import moving_mnist as mm

    counts = split_counts(data_cfg, data_cfg.num_clips)
    bank = mm.load_digit_bank(data_cfg.digit_bank, data_cfg.digit_size)
    streams = mm.split_streams(data_cfg.seed)
    params = {s: mm.draw_params(streams[s], counts[s], data_cfg.digits_per_clip, len(bank)) for s in SPLITS}

    def read(split: str, start: int, stop: int) -> np.ndarray:
        kw = dict(frames=data_cfg.frames, image_size=data_cfg.image_size, step_length=data_cfg.step_length)
        return mm.render(params[split][start:stop], bank, **kw)

    info = {"kind": "generate", "recipe": "openstl", "seed": data_cfg.seed, "digit_bank": data_cfg.digit_bank}
    return _Source(info, counts, (data_cfg.frames, data_cfg.image_size, data_cfg.image_size), read)


def _downloaded(data_cfg: DataConfig, progress: bool) -> _Source:
    from nfp.data import download

    path = download.fetch(data_cfg, progress=progress)
    array = download.open_clips(path)  # (time, clips, H, W) uint8, memory-mapped
    frames, total, h, w = array.shape
    if data_cfg.frames > frames:
        raise DataError(f"data.frames: got {data_cfg.frames}, but {path} has {frames} frames per clip")
    if data_cfg.image_size != h or h != w:
        raise DataError(f"data.image_size: got {data_cfg.image_size}, but {path} has {h}×{w} frames")
    available = min(total, data_cfg.num_clips)
    if data_cfg.num_clips > total and data_cfg.num_clips != DataConfig.num_clips:  # the default means "all of them"
        warnings.warn(
            f"data.num_clips: {data_cfg.num_clips} asked for, {path.name} holds {total}: using {total}", stacklevel=2
        )
    counts = split_counts(data_cfg, available)
    order = np.random.default_rng(data_cfg.seed).permutation(available)  # seeded split of the file's clips
    bounds = np.cumsum([0] + [counts[s] for s in SPLITS])
    indices = {s: order[bounds[i] : bounds[i + 1]] for i, s in enumerate(SPLITS)}

    def read(split: str, start: int, stop: int) -> np.ndarray:
        idx = indices[split][start:stop]
        sort = np.argsort(idx)  # ascending reads from the memory map, then back to split order
        clips = np.empty((len(idx), data_cfg.frames, h, w), np.uint8)
        clips[sort] = np.asarray(array[: data_cfg.frames, idx[sort]]).transpose(1, 0, 2, 3)
        return clips

    info = {
        "kind": "download",
        "url": data_cfg.url,
        "sha256": download.file_digest(path, "sha256"),
        "clips_in_file": total,
        "seed": data_cfg.seed,
    }
    return _Source(info, counts, (data_cfg.frames, h, w), read)


# --------------------------------------------------------------------------- writing
def prepare(data_cfg: DataConfig, *, progress: bool = True) -> Manifest:
    """Write sharded TFRecords + manifest.json to data_cfg.dir; skips shards already written identically."""
    storage.check_credentials(data_cfg.dir, data_cfg.url if data_cfg.source == "download" else "")
    return _write(data_cfg, _existing_manifest(data_cfg.dir), progress=progress)


def _existing_manifest(data_dir: str) -> Manifest | None:
    try:
        return load_manifest(data_dir)
    except DataError:
        return None


def _write(data_cfg: DataConfig, old: Manifest | None, *, progress: bool) -> Manifest:
    """prepare(), given the dir's current manifest (None: none usable)."""
    from tqdm.auto import tqdm

    source = _downloaded(data_cfg, progress) if data_cfg.source == "download" else _generated(data_cfg)
    clip_bytes = int(np.prod(source.clip_shape))
    n_shards = shard_counts(data_cfg, source.counts, clip_bytes)
    config = content_config(data_cfg)
    _check_writable(data_cfg.dir)
    if old is not None and old.content.get("config") != config:
        _check_replaceable(data_cfg, old, config)
        storage.remove(old.url)  # readers must not pair the old manifest with new shards
        old = None
    known = {s["name"]: s for entry in (old.content["splits"].values() if old else ()) for s in entry["shards"]}

    splits = {}
    with (
        tempfile.TemporaryDirectory(prefix="nfp-prepare-") as tmp,
        tqdm(
            total=sum(source.counts.values()), unit="clip", desc=f"prepare {data_cfg.dir}", disable=not progress
        ) as bar,
    ):
        # Local shards are finished next to their final name so the rename is atomic.
        tmp_dir = storage.local_path(data_cfg.dir) if storage.is_local(data_cfg.dir) else Path(tmp)
        for split in SPLITS:
            shards = []
            sizes = (
                [len(a) for a in np.array_split(np.arange(source.counts[split]), n_shards[split])]
                if n_shards[split]
                else []
            )
            start = 0
            for i, size in enumerate(sizes):
                name = shard_name(split, i, len(sizes), data_cfg.compression)
                url = storage.join(data_cfg.dir, name)
                entry = _reuse(url, known.get(name), size)
                if entry is None:
                    chunks = (
                        source.read(split, a, min(a + _CHUNK, start + size)) for a in range(start, start + size, _CHUNK)
                    )
                    entry = _write_shard(url, name, chunks, data_cfg.compression, tmp_dir, bar)
                else:
                    bar.update(size)
                shards.append(entry)
                start += size
            splits[split] = {"count": source.counts[split], "shards": shards}

        content = {
            "format_version": FORMAT_VERSION,
            "source": source.info,
            "config": config,
            "clip_shape": list(source.clip_shape),
            "dtype": "uint8",
            "record": RECORD,
            "compression": data_cfg.compression,
            "splits": splits,
        }
        content["id"] = _content_id(content)
        written = Manifest(data_cfg.dir, content)
        storage.write_bytes(written.url, json.dumps(content, indent=2).encode(), tmp_dir)
    _prune(data_cfg.dir, written.shard_names())
    preview.write(data_cfg.dir, {s: source.read(s, 0, min(preview.CLIPS, n)) for s, n in source.counts.items() if n})
    return written


# How the clips are laid out in files, not which clips: changing these only re-shards the same data set.
_LAYOUT_KEYS = ("num_shards", "shard_mb", "num_workers", "compression")


def _check_replaceable(data_cfg: DataConfig, old: Manifest, config: dict) -> None:
    """DataError unless data.dir holds the same clips in another layout, or data.overwrite allows replacing them."""
    clips = {k: v for k, v in config.items() if k not in _LAYOUT_KEYS}
    if data_cfg.overwrite or {k: v for k, v in old.content.get("config", {}).items() if k not in _LAYOUT_KEYS} == clips:
        return
    raise DataError(
        f"data.dir {data_cfg.dir}: holds another data set ({_describe(old.content.get('config', {}), old.clip_shape)}) "
        f"than this config makes ({_describe(config, (data_cfg.frames, data_cfg.image_size, data_cfg.image_size))}); "
        "use another data.dir, or set data.overwrite=true to replace it"
    )


def _describe(config: dict, clip_shape) -> str:
    """ "download of URL, 10000 clips of 20×64×64" / "generate (seed 0), 600 clips of 20×32×32"."""
    origin = f"download of {redact(str(config.get('url')))}" if config.get("source") == "download" else (
        f"generate from {config.get('digit_bank')} digits, seed {config.get('seed')}")  # fmt: skip
    return f"{origin}, {config.get('num_clips')} clips of {'×'.join(map(str, clip_shape))}"


def _check_writable(data_dir: str) -> None:
    try:
        storage.make_writable_dir(data_dir)
    except OSError as err:
        raise DataError(f"data.dir: cannot write to {data_dir} ({err.strerror or err})") from None


def _reuse(url: str, entry: dict | None, records: int) -> dict | None:
    """The old manifest entry when the shard on disk still has its recorded sha256, else None."""
    if entry is None or entry["records"] != records or not storage.exists(url):
        return None
    return entry if storage.sha256(url)[0] == entry["sha256"] else None


def _write_shard(url: str, name: str, chunks, compression: str, tmp_dir: Path, bar) -> dict:
    import tensorflow as tf

    tmp = tmp_dir / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    records = 0
    try:
        with tf.io.TFRecordWriter(str(tmp), options="GZIP" if compression == "gzip" else None) as writer:
            for clips in chunks:
                for clip in clips:
                    writer.write(clip.tobytes())
                records += len(clips)
                bar.update(len(clips))
        digest, size = storage.sha256(str(tmp))
        storage.put(tmp, url)
    except OSError as err:
        raise DataError(f"data.dir: cannot write shard {url} ({err.strerror or err})") from None
    except tf.errors.OpError as err:  # TF's writer: ResourceExhaustedError when the disk is full, …
        raise DataError(f"data.dir: cannot write shard {url} ({first_line(err)})") from None
    except Exception as err:
        if storage.is_local(url):
            raise
        raise DataError(f"data.dir: cannot upload shard {url} ({type(err).__name__}: {err})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"name": name, "records": records, "sha256": digest, "bytes": size}


def _content_id(content: dict) -> str:
    identity = {k: content[k] for k in ("clip_shape", "dtype", "compression", "splits")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _prune(data_dir: str, keep: set[str]) -> None:
    """Delete shards of an earlier layout (other counts/compression) so the dir holds one data set."""
    for name in storage.listdir(data_dir):
        if SHARD_NAME.match(name) and name not in keep:
            storage.remove(storage.join(data_dir, name))
