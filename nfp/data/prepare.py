"""Moving MNIST (generated or downloaded) → train/val/test → sharded TFRecords + manifest.json.

One record per clip: its raw uint8 bytes, C order (T, H, W); shape and dtype are in the manifest. (No
tf.train.Example: parsing one cost ~20–40 CPU µs per 64×64 clip, up to a fifth of the pipeline.) Shards are
named `train-00000-of-00010.tfrecord[.gz]`; the manifest, written last, lists per shard its
record count, size and sha256, and is the only entry point readers use. preview.png/.gif, a look
at each split's first clips, go beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nfp import rundir, storage
from nfp.config import DataConfig
from nfp.data import preview
from nfp.data.manifest import FILENAME, FORMAT_VERSION, RECORD, SHARD_NAME, Manifest, content_id, load_manifest
from nfp.data.moving_mnist import SPLITS
from nfp.errors import DataError, first_line, redact

_CHUNK = 256  # clips rendered/read at a time: bounds memory whatever the shard size
_MIN_SHARD_MB = 10  # TF guidance: shards of at least 10 MB (ideally 100 MB)


def ensure_prepared(data_cfg: DataConfig) -> Manifest:
    """The existing manifest when it was prepared from this config, else prepare it now (or take what another job
    preparing it meanwhile wrote): one manifest read when nothing changes."""
    storage.check_credentials(data_cfg.dir, data_cfg.url if data_cfg.source == "download" else "")
    existing = _existing_manifest(data_cfg.dir)
    if existing is None or not _same_config(existing, content_config(data_cfg)):
        return _write(data_cfg, existing, progress=True, reuse=True)
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
        ["url", "sha256", "layout"]
        if data_cfg.source == "download"
        else ["digit_bank", "digit_size", "digits_per_clip", "step_length"]
    )
    out = {k: getattr(data_cfg, k) for k in keys}
    out["split"] = dataclasses.asdict(data_cfg.split)
    if "url" in out:
        out["url"] = redact(out["url"])  # the manifest is logged and copied: a URL's user:password stays out of it
    return out


# Keys content_config gained after data dirs were prepared without them, at the value those dirs were made with.
_ADDED_KEYS = {"download": {"layout": "TNHW"}}


def _old_config(manifest: Manifest) -> dict:
    config = manifest.content.get("config", {})
    return {**_ADDED_KEYS.get(config.get("source"), {}), **config}


def _same_config(manifest: Manifest, config: dict) -> bool:
    return _old_config(manifest) == config


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
    clip_shape = (data_cfg.frames, data_cfg.image_size, data_cfg.image_size)
    # the random draws of every clip are held at once: 4 float64 and an index per digit
    _check_fits(data_cfg, counts, clip_shape, per_clip=48 * data_cfg.digits_per_clip)
    bank = mm.load_digit_bank(data_cfg.digit_bank, data_cfg.digit_size)
    streams = mm.split_streams(data_cfg.seed)
    params = {s: mm.draw_params(streams[s], counts[s], data_cfg.digits_per_clip, len(bank)) for s in SPLITS}

    def read(split: str, start: int, stop: int) -> np.ndarray:
        kw = dict(frames=data_cfg.frames, image_size=data_cfg.image_size, step_length=data_cfg.step_length)
        return mm.render(params[split][start:stop], bank, **kw)

    info = {"kind": "generate", "recipe": "openstl", "seed": data_cfg.seed, "digit_bank": data_cfg.digit_bank}
    return _Source(info, counts, clip_shape, read)


def _downloaded(data_cfg: DataConfig, progress: bool) -> _Source:
    from nfp.data import download

    path = download.fetch(data_cfg, progress=progress)
    array = download.open_clips(path, data_cfg)  # (time, clips, H, W) uint8, memory-mapped, in data.layout
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
    _check_fits(data_cfg, counts, (data_cfg.frames, h, w), per_clip=16)  # the seeded order and each split's part
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
        "url": redact(data_cfg.url),
        "sha256": download.file_digest(path, "sha256"),
        "clips_in_file": total,
        "layout": data_cfg.layout,
        "seed": data_cfg.seed,
    }
    return _Source(info, counts, (data_cfg.frames, h, w), read)


def _memory_bytes() -> int | None:
    """This machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(data_cfg: DataConfig, counts: dict[str, int], clip_shape, per_clip: int) -> None:
    """DataError naming the keys to lower when prepare could not hold what it allocates in this machine's memory,
    or (local data.dir, no compression) its shards could not fit on the disk: before anything is allocated or
    written."""
    clips, clip_bytes = sum(counts.values()), math.prod(clip_shape)
    shape = "×".join(map(str, clip_shape))
    # At once: `per_clip` bytes for every clip, a chunk of clips rendered or read plus its copy, and the preview's
    # clips of every split with their RGB picture.
    parts = {
        "data.num_clips": clips * per_clip,
        "data.image_size, data.frames": (2 * min(_CHUNK, max(counts.values())) + 4 * 3 * preview.CLIPS) * clip_bytes,
    }
    need, have = sum(parts.values()), _memory_bytes()
    if have is not None and need > have:
        keys = " or ".join(k for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= need / 10)
        raise DataError(
            f"{keys}: preparing {clips} clips of {shape} would take about {_size(need)} of memory at once, "
            f"this machine has {_size(have)}; lower {keys}"
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
            f"data.num_clips, data.image_size, data.frames: {clips} clips of {shape} take {_size(disk)} of shards, "
            f"{existing} has {_size(free)} free; lower them, use data.compression=gzip or another data.dir"
        )


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


# --------------------------------------------------------------------------- writing
def prepare(data_cfg: DataConfig, *, progress: bool = True) -> Manifest:
    """Write sharded TFRecords + manifest.json to data_cfg.dir; skips shards already written identically."""
    storage.check_credentials(data_cfg.dir, data_cfg.url if data_cfg.source == "download" else "")
    return _write(data_cfg, _existing_manifest(data_cfg.dir), progress=progress)


def _existing_manifest(data_dir: str) -> Manifest | None:
    """The dir's manifest; None when there is none or it cannot be used (see `_check_unusable`)."""
    try:
        return load_manifest(data_dir)
    except DataError:
        return None


HOLD = rundir.Use(key="data.dir", job="nfp prepare", lock=".nfp-prepare.lock", lease_key="its lease")
_WAIT_S = 0.5  # between tries for a data dir another job holds


@contextlib.contextmanager
def _holding(data_dir: str):
    """Hold data.dir while writing it (nfp.rundir's hold: an flock on local disk, a lease object on gs://). A second
    job waits for the first to finish, then sees what it left: the same data set (reused) or another (refused)."""
    with contextlib.ExitStack() as stack:
        told = False
        while True:
            try:
                hold = stack.enter_context(rundir.held(rundir.RunDir(data_dir), use=HOLD))
                break
            except rundir.InUse as busy:
                if not told:
                    print(
                        f"prepare: data.dir {data_dir} is being written by another nfp job ({busy.holder}); waiting "
                        "for it to finish",
                        file=sys.stderr,
                        flush=True,
                    )
                    told = True
                time.sleep(_WAIT_S if storage.is_local(data_dir) else 10 * _WAIT_S)
        yield hold


def _write(data_cfg: DataConfig, old: Manifest | None, *, progress: bool, reuse: bool = False) -> Manifest:
    """prepare(), given the dir's manifest as read before (None: none usable); reuse: return the manifest another job
    wrote meanwhile when it is of this config."""
    config = content_config(data_cfg)
    if old is not None and not _same_config(old, config):
        _check_replaceable(data_cfg, old, config)  # refused before any download or write (and again once held)
    source = _downloaded(data_cfg, progress) if data_cfg.source == "download" else _generated(data_cfg)
    clip_bytes = int(np.prod(source.clip_shape))
    n_shards = shard_counts(data_cfg, source.counts, clip_bytes)
    _check_writable(data_cfg.dir)
    with _holding(data_cfg.dir) as hold:
        if old is not None or storage.exists(storage.join(data_cfg.dir, FILENAME)):
            old = _existing_manifest(data_cfg.dir)  # another job may have written it since it was read
        if reuse and old is not None and _same_config(old, config):
            return old
        return _write_held(data_cfg, old, source, n_shards, config, hold, progress=progress)


def _write_held(data_cfg: DataConfig, old, source: _Source, n_shards, config: dict, hold, *, progress: bool):
    from tqdm.auto import tqdm

    if old is not None and not _same_config(old, config):
        _check_replaceable(data_cfg, old, config)
        storage.remove(old.url)  # readers must not pair the old manifest with new shards
        for name in (preview.PNG, preview.GIF):  # nor look at the old clips' preview
            storage.remove(storage.join(data_cfg.dir, name))
        old = None
    elif old is None:
        _check_unusable(data_cfg, config)
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
            n, parts = source.counts[split], n_shards[split]
            sizes = [n // parts + (i < n % parts) for i in range(parts)] if parts else []  # as np.array_split
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
        content["id"] = content_id(content)
        written = Manifest(data_cfg.dir, content)
        if hold.lost.is_set():
            raise DataError(hold.reason)
        storage.write_bytes(written.url, json.dumps(content, indent=2).encode(), tmp_dir)
    _prune(data_cfg.dir, written.shard_names())
    preview.write(data_cfg.dir, {s: source.read(s, 0, min(preview.CLIPS, n)) for s, n in source.counts.items() if n})
    return written


# How the clips are laid out in files, not which clips: changing these only re-shards the same data set.
_LAYOUT_KEYS = ("num_shards", "shard_mb", "num_workers", "compression")


def _check_replaceable(data_cfg: DataConfig, old: Manifest, config: dict) -> None:
    """DataError unless data.dir holds the same clips in another layout, or data.overwrite allows replacing them."""
    clips = {k: v for k, v in config.items() if k not in _LAYOUT_KEYS}
    if data_cfg.overwrite or {k: v for k, v in _old_config(old).items() if k not in _LAYOUT_KEYS} == clips:
        return
    shape = old.content.get("clip_shape")
    shape = shape if isinstance(shape, list) else ["?"]
    raise DataError(
        f"data.dir {data_cfg.dir}: holds another data set ({_describe(old.content.get('config', {}), shape)}) "
        f"than this config makes ({_describe(config, (data_cfg.frames, data_cfg.image_size, data_cfg.image_size))}); "
        "use another data.dir, or set data.overwrite=true to replace it"
    )


def _check_unusable(data_cfg: DataConfig, config: dict) -> None:
    """An unusable manifest.json (edited by hand, cut short, of another format) is prepared afresh, but not when it
    says it was made for other clips: those are not replaced without data.overwrite either."""
    url = storage.join(data_cfg.dir, FILENAME)
    if not storage.exists(url):
        return
    try:
        load_manifest(data_cfg.dir)
        return  # usable after all (written meanwhile)
    except DataError as err:
        why = str(err)
    try:
        raw = json.loads(storage.read_bytes(url))
    except Exception:  # noqa: BLE001 - not even JSON: nothing says what it held
        raw = None
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        _check_replaceable(data_cfg, Manifest(data_cfg.dir, raw), config)
    print(f"prepare: {why.split('; run `nfp prepare`')[0]}: preparing it afresh", file=sys.stderr)


def _describe(config: dict, clip_shape) -> str:
    """ "download of URL, 10000 clips of 20×64×64" / "generate (seed 0), 600 clips of 20×32×32"."""
    origin = f"download of {redact(str(config.get('url')))}" if config.get("source") == "download" else (
        f"generate from {config.get('digit_bank')} digits, seed {config.get('seed')}")  # fmt: skip
    return f"{origin}, {config.get('num_clips')} clips of {'×'.join(map(str, clip_shape))}"


def _check_writable(data_dir: str) -> None:
    """DataError saying why data.dir cannot be written: a file, under a file, a read-only filesystem, no permission."""
    try:
        storage.make_writable_dir(data_dir)
    except OSError as err:
        if not storage.is_local(data_dir):
            raise DataError(f"data.dir: cannot write to {data_dir} ({err.strerror or err})") from None
        path = storage.local_path(data_dir)
        if path.exists() and not path.is_dir():
            raise DataError(f"data.dir: {data_dir} is a file, expected a directory") from None
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise DataError(f"data.dir: cannot make {data_dir}: {existing} is a file, expected a directory") from None
        if err.errno == errno.EROFS or _read_only(existing):
            raise DataError(f"data.dir: cannot write to {data_dir}: {existing} is on a read-only filesystem") from None
        raise DataError(f"data.dir: cannot write to {data_dir} ({err.strerror or err})") from None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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


def _prune(data_dir: str, keep: set[str]) -> None:
    """Delete shards of an earlier layout (other counts/compression) so the dir holds one data set."""
    for name in storage.listdir(data_dir):
        if SHARD_NAME.match(name) and name not in keep:
            storage.remove(storage.join(data_dir, name))
