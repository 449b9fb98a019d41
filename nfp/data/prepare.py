"""Moving MNIST (generated or downloaded) or your own files (nfp.data.files) → train/val/test → sharded TFRecords +
manifest.json.

One record per clip: its raw uint8 bytes, C order (T, H, W, C); shape and dtype are in the manifest. (No
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
import os
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nfp import rundir, storage
from nfp.config import FILE_SOURCES, DataConfig
from nfp.data import files, images, plan, preview, workers
from nfp.data.identity import config_of, content_config, remember_hashes, same_config, what_differs
from nfp.data.manifest import FILENAME, FORMAT_VERSION, RECORD, SHARD_NAME, Manifest, content_id, load_manifest
from nfp.data.moving_mnist import SPLITS
from nfp.data.plan import shard_counts
from nfp.errors import DataError, first_line, redact


def ensure_prepared(data_cfg: DataConfig) -> Manifest:
    """The existing manifest when it was prepared from this config, else prepare it now (or take what another job
    preparing it meanwhile wrote): one manifest read when nothing changes."""
    storage.check_credentials(data_cfg.dir, data_cfg.url if data_cfg.source == "download" else "")
    existing = _existing_manifest(data_cfg.dir)
    entries = _own_entries(data_cfg)  # listed once: compared here, then read by _write
    if existing is None or not same_config(existing, content_config(data_cfg, entries)):
        return _write(data_cfg, existing, progress=True, reuse=True, entries=entries)
    if not storage.exists(storage.join(data_cfg.dir, preview.PNG)):  # prepared before previews existed
        preview.write(data_cfg.dir, preview.from_shards(data_cfg, existing))
    return existing


# --------------------------------------------------------------------------- sources
@dataclasses.dataclass
class _Source:
    info: dict  # what the manifest records about where the clips came from
    counts: dict[str, int]
    clip_shape: tuple[int, int, int, int]
    read: Callable[[str, int, int], np.ndarray]  # (split, start, stop) -> uint8 (n, T, H, W, C)
    close: Callable[[], None] = lambda: None  # the decoding pool's end


def _generated(data_cfg: DataConfig) -> _Source:
    from nfp.data import moving_mnist as mm

    d = data_cfg
    if d.channels == 3 and d.background == "none":  # allowed (a colour model's shapes on cheap data), but said
        print("prepare: note: data.channels 3 with grey digits (data.background none): three equal channels, three "
              "times the storage; data.background photos makes colour clips", flush=True)  # fmt: skip
    counts = plan.split_counts(d, d.num_clips)
    clip_shape = (d.frames, *d.frame_shape)
    # the random draws of every clip are held at once: 4 float64 and an index per digit (and 4 numbers per photo)
    plan.check_fits(d, counts, clip_shape, per_clip=48 * d.digits_per_clip + 32 * (d.background == "photos"))
    bank = mm.load_digit_bank(d.digit_bank, d.digit_size)
    streams = mm.split_streams(d.seed)
    params = {s: mm.draw_params(streams[s], counts[s], d.digits_per_clip, len(bank)) for s in SPLITS}
    photos = mm.load_photos(d.frame_hw) if d.background == "photos" else None
    backgrounds = (
        {s: mm.draw_backgrounds(d.seed, s, counts[s], len(photos)) for s in SPLITS} if photos is not None else {}
    )

    def read(split: str, start: int, stop: int) -> np.ndarray:
        grey = mm.render(
            params[split][start:stop], bank, frames=d.frames, image_size=d.frame_hw, step_length=d.step_length
        )
        drawn = backgrounds[split][start:stop] if backgrounds else None
        return mm.dressed(grey, channels=d.channels, backgrounds=drawn, photos=photos, step_length=d.step_length)

    info = {"kind": "generate", "recipe": "openstl", "seed": d.seed, "digit_bank": d.digit_bank}
    if photos is not None:
        info["background"] = "scikit-learn sample photos (china.jpg, flower.jpg)"
    return _Source(info, counts, clip_shape, read)


def _downloaded(data_cfg: DataConfig, progress: bool) -> _Source:
    from nfp.data import download

    path = download.fetch(data_cfg, progress=progress)
    array = download.open_clips(path, data_cfg)  # (time, clips, H, W, C) uint8, memory-mapped, in data.layout
    frames, total, h, w, _ = array.shape
    if data_cfg.frames > frames:
        raise DataError(f"data.frames: got {data_cfg.frames}, but {path} has {frames} frames per clip")
    if data_cfg.frame_hw != (h, w):
        key, given = data_cfg.frame_hw_key
        raise DataError(f"{key}: got {given}, but {path} has {h}×{w} frames")
    available = min(total, data_cfg.num_clips)
    if data_cfg.num_clips > total and data_cfg.num_clips != DataConfig.num_clips:  # the default means "all of them"
        warnings.warn(
            f"data.num_clips: {data_cfg.num_clips} asked for, {path.name} holds {total}: using {total}", stacklevel=2
        )
    counts = plan.split_counts(data_cfg, available)
    clip_shape = (data_cfg.frames, h, w, data_cfg.channels)
    plan.check_fits(data_cfg, counts, clip_shape, per_clip=16)  # the seeded order and each split's part
    order = np.random.default_rng(data_cfg.seed).permutation(available)  # seeded split of the file's clips
    bounds = np.cumsum([0] + [counts[s] for s in SPLITS])
    indices = {s: order[bounds[i] : bounds[i + 1]] for i, s in enumerate(SPLITS)}

    def read(split: str, start: int, stop: int) -> np.ndarray:
        idx = indices[split][start:stop]
        sort = np.argsort(idx)  # ascending reads from the memory map, then back to split order
        clips = np.empty((len(idx), data_cfg.frames, h, w, array.shape[-1]), np.uint8)
        clips[sort] = np.asarray(array[: data_cfg.frames, idx[sort]]).swapaxes(0, 1)
        return images.to_channels(clips, data_cfg.channels)

    info = {
        "kind": "download",
        "url": redact(data_cfg.url),
        "sha256": download.file_digest(path, "sha256"),
        "clips_in_file": total,
        "layout": data_cfg.layout,
        "seed": data_cfg.seed,
    }
    return _Source(info, counts, clip_shape, read)


def _own_files(data_cfg: DataConfig, entries: list, progress: bool) -> _Source:
    """Clips of your own videos, frame folders or arrays (nfp.data.files), decoded in data.prepare_processes."""
    pool = workers.pool(data_cfg.prepare_processes)
    try:
        videos, skipped = files.index(data_cfg, entries, pool, progress)
        splits = files.split_videos(data_cfg, videos)
        reader = files.Reader(data_cfg, splits, pool)
        counts = reader.counts()
        if not counts["train"]:
            raise DataError("data.split: leaves no training clips")
        clip_shape = (data_cfg.frames, *data_cfg.frame_shape)
        plan.check_fits(data_cfg, counts, clip_shape, per_clip=64)  # every clip's (video, start)
    except BaseException:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        raise
    info = {
        "kind": data_cfg.source,
        "path": [redact(p) for p in data_cfg.path],
        "videos": {split: [v.name for v in videos] for split, videos in splits.items()},
        "skipped": [{"file": s.name, "why": s.why} for s in skipped],
    }
    return _Source(info, counts, clip_shape, reader, close=(pool.shutdown if pool is not None else lambda: None))


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


def _own_entries(data_cfg: DataConfig) -> list | None:
    """The files of data.path for the sources that read your own files, else None."""
    return files.list_entries(data_cfg) if data_cfg.source in FILE_SOURCES else None


def _write(
    data_cfg: DataConfig, old: Manifest | None, *, progress: bool, reuse: bool = False, entries: list | None = None
) -> Manifest:
    """prepare(), given the dir's manifest as read before (None: none usable) and data.path's files when listed
    already; reuse: return the manifest another job wrote meanwhile when it is of this config."""
    entries = entries if entries is not None else _own_entries(data_cfg)
    config = content_config(data_cfg, entries)
    if old is not None and not same_config(old, config):
        _check_replaceable(data_cfg, old, config)  # refused before any download or write (and again once held)
    if data_cfg.source == "download":
        source = _downloaded(data_cfg, progress)
    elif data_cfg.source == "generate":
        source = _generated(data_cfg)
    else:
        source = _own_files(data_cfg, entries, progress)
    with contextlib.ExitStack() as stack:
        stack.callback(source.close)
        clip_bytes = int(np.prod(source.clip_shape))
        n_shards = shard_counts(data_cfg, source.counts, clip_bytes)
        _check_writable(data_cfg.dir)
        hold = stack.enter_context(_holding(data_cfg.dir))
        if old is not None or storage.exists(storage.join(data_cfg.dir, FILENAME)):
            old = _existing_manifest(data_cfg.dir)  # another job may have written it since it was read
        if reuse and old is not None and same_config(old, config):
            return old
        manifest = _write_held(data_cfg, old, source, n_shards, config, hold, progress=progress)
        if entries is not None:  # the files' hashes, remembered in data.dir now that it is there
            remember_hashes(data_cfg, entries)
        return manifest


def _write_held(data_cfg: DataConfig, old, source: _Source, n_shards, config: dict, hold, *, progress: bool):
    from tqdm.auto import tqdm

    if old is not None and not same_config(old, config):
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
            total=sum(source.counts.values()),
            desc=f"prepare {data_cfg.dir}",
            disable=not progress,
            # your own files: counted in frames (a clip's worth at a time), as the files are
            **(
                {"unit": "frame", "unit_scale": source.clip_shape[0]}
                if data_cfg.source in FILE_SOURCES
                else {"unit": "clip"}
            ),
        ) as bar,
    ):
        # Local shards are finished next to their final name so the rename is atomic.
        tmp_dir = storage.local_path(data_cfg.dir) if storage.is_local(data_cfg.dir) else Path(tmp)
        for split in SPLITS:
            shards = []
            n, parts = source.counts[split], n_shards[split]
            sizes = [n // parts + (i < n % parts) for i in range(parts)] if parts else []  # as np.array_split
            start, chunk = 0, plan.chunk(source.clip_shape)
            for i, size in enumerate(sizes):
                name = plan.shard_name(split, i, len(sizes), data_cfg.compression)
                url = storage.join(data_cfg.dir, name)
                entry = _reuse(url, known.get(name), size)
                if entry is None:
                    chunks = (
                        source.read(split, a, min(a + chunk, start + size)) for a in range(start, start + size, chunk)
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
    layout = tuple(f"data.{key}:" for key in _LAYOUT_KEYS)
    skipped = bool(old.content.get("source", {}).get("skipped"))
    differs = [d for d in what_differs(config_of(old), config, skipped=skipped) if not d.startswith(layout)]
    if data_cfg.overwrite or not differs:
        return
    shape = old.content.get("clip_shape")
    shape = shape if isinstance(shape, list) else ["?"]
    differs = "; ".join(differs)
    raise DataError(
        f"data.dir {data_cfg.dir}: holds another data set ({_describe(old.content.get('config', {}), shape)}) "
        f"than this config makes ({_describe(config, (data_cfg.frames, *data_cfg.frame_shape))}), differing in "
        f"{differs}; use another data.dir, or set data.overwrite=true to replace it"
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
    source = config.get("source")
    if source in FILE_SOURCES:
        return f"{source} from {', '.join(map(str, config.get('path', [])))}, clips of {plan.shape_text(clip_shape)}"
    origin = f"download of {redact(str(config.get('url')))}" if source == "download" else (
        f"generate from {config.get('digit_bank')} digits, seed {config.get('seed')}")  # fmt: skip
    return f"{origin}, {config.get('num_clips')} clips of {plan.shape_text(clip_shape)}"


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
