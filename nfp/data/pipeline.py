"""tf.data pipelines over prepared shards: manifest → files → records → batched (inputs, targets).

Shards are verified against the manifest's sha256 before TF reads them, because TF's own CRC
errors (tf.errors.DataLossError "corrupted record at N") do not name the file. gs:// shards are
either read by TF directly (production; TF's CRC check still applies) or staged to a local dir
through gcsfs (data.stage) and verified there. Where TF trips on a shard anyway (a direct gs:// read, a
shard changed after the check: a bad CRC, records of another size, fewer records than the manifest),
`naming_bad_shards` hashes the shards to name the culprit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from nfp.config import DataConfig
from nfp import storage
from nfp.data.prepare import load_manifest
from nfp.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE


def make_dataset(data_cfg: DataConfig, split: str, global_batch_size: int, *, training: bool, num_workers: int = 1) -> tf.data.Dataset:
    """(inputs, targets) float32 in [0, 1], each (batch, time, H, W, 1); training: shuffled, repeated, full batches."""
    manifest, files = _shard_files(data_cfg, split)
    to_pairs = _pairs_fn(data_cfg, manifest)
    if training:
        # Same file order on every worker (fixed seed), so FILE auto-sharding hands out disjoint files.
        ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=data_cfg.seed)
        ds = ds.interleave(
            _reader(data_cfg, manifest),
            cycle_length=min(len(files), 16),  # AUTOTUNE would read only as many files at once as there are cores
            # Runs of 8 records per file: measured ~5% less CPU per clip than switching file every record, and
            # no less random: a shard's clips are already in random order (a seeded split, or random draws).
            block_length=8,
            num_parallel_calls=AUTOTUNE,
        )
    else:
        ds = _reader(data_cfg, manifest)(files)  # shard by shard: a fixed order
    # Batch first: one decode per batch is far cheaper than one per record.
    decode = functools.partial(_decode, manifest=manifest)
    if data_cfg.cache:
        # Decoded clips, so later epochs skip reading, CRC checks and decoding (as fast as clips held in
        # memory). Later epochs replay the first one's file order; the shuffle buffer still mixes them.
        ds = ds.batch(256).map(decode, num_parallel_calls=AUTOTUNE).unbatch().cache()
        decode = tf.identity
    if training:
        if data_cfg.shuffle_buffer > 0:
            ds = ds.shuffle(data_cfg.shuffle_buffer)
        ds = ds.repeat()
    ds = ds.batch(global_batch_size, drop_remainder=training)
    ds = ds.map(lambda batch: to_pairs(decode(batch)), num_parallel_calls=AUTOTUNE)
    if not training and num_workers == 1:  # (workers each see a part: their own length is not the manifest's)
        # The manifest knows the pass's length, TF's file reader does not: Keras then shows a total and does
        # not warn "Your input ran out of data" at the end of the first validation pass.
        clips = _split_entry(manifest, data_cfg, split)["count"]
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-clips // global_batch_size)))
    options = tf.data.Options()
    options.deterministic = not training  # training: readers and decoders hand on whatever is ready first
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.FILE if len(files) >= num_workers else policy.DATA
    ds = ds.with_options(options)
    if training and data_cfg.service_address:
        ds = ds.apply(tf.data.experimental.service.distribute(processing_mode="parallel_epochs", service=data_cfg.service_address))
    return ds.prefetch(AUTOTUNE)


def clip_batches(data_cfg: DataConfig, split: str, batch_size: int, max_clips: int | None = None) -> tf.data.Dataset:
    """uint8 clips (batch, T, H, W) of a split in manifest order, at most max_clips of them."""
    manifest, files = _shard_files(data_cfg, split)
    ds = _reader(data_cfg, manifest)(files)
    if max_clips is not None:
        ds = ds.take(max_clips)
    return ds.batch(batch_size).map(lambda r: _decode(r, manifest), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def read_clips(data_cfg: DataConfig, split: str, count: int) -> np.ndarray:
    """The first `count` clips of a split (fewer if the split is smaller), uint8 (count, T, H, W)."""
    manifest = load_manifest(data_cfg.dir)
    ds = clip_batches(data_cfg, split, batch_size=max(1, min(count, 256)), max_clips=count)
    with naming_bad_shards(data_cfg, split):
        batches = [b.numpy() for b in ds]
    return np.concatenate(batches) if batches else np.zeros((0, *manifest["clip_shape"]), np.uint8)


# Besides TF's record check (DataLossError, "corrupted record"), what a shard with other valid records makes TF
# raise: a record of another size (in _decode), or fewer clips than the manifest counts (assert_cardinality).
_SHARD_SYMPTOMS = ("DecodeRaw requires input strings to all be the same size", "Input to reshape is a tensor with",
                   "Input dataset was expected to contain")


@contextlib.contextmanager
def naming_bad_shards(data_cfg: DataConfig, *splits: str):
    """Turn the errors a shard that no longer matches its manifest makes TF raise, which name no file, into a
    DataError naming that shard; TF's own error stands where every shard matches (not a shard's fault)."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError) as original:
        if not isinstance(original, tf.errors.DataLossError) and not any(s in str(original) for s in _SHARD_SYMPTOMS):
            raise
        print(f"nfp: reading a record failed ({type(original).__name__}); hashing the {'/'.join(splits)} shards to name "
              "the one that changed", file=sys.stderr)
        try:
            bad = _first_bad_shard(data_cfg, splits)
        except Exception as err:  # noqa: BLE001 - naming is best effort: TF's error must not be lost to it
            print(f"nfp: could not hash the shards ({type(err).__name__}: {err})", file=sys.stderr)
            raise original from None
        if bad is not None:
            raise bad from None
        raise


def _first_bad_shard(data_cfg: DataConfig, splits) -> DataError | None:
    """The error naming the first shard whose bytes differ from the manifest, hashed afresh; None if all match."""
    manifest = load_manifest(data_cfg.dir)
    # A bad staged copy may have a good source: staging re-checks its copies and fetches bad ones again.
    fix = "run again to stage it afresh" if _staged(data_cfg) else "run `nfp prepare` again"
    for split in splits:
        for path, shard in zip(_read_paths(data_cfg, manifest, split), _split_entry(manifest, data_cfg, split)["shards"]):
            try:
                _verify(path, shard, rehash=True, fix=fix)  # a flipped byte keeps size and maybe mtime: trust no memo
            except DataError as bad:
                return bad
    return None


def split_size(data_cfg: DataConfig, split: str) -> int:
    """Clips in a split, from the manifest."""
    return _split_entry(load_manifest(data_cfg.dir), data_cfg, split)["count"]


# --------------------------------------------------------------------------- records
def _decode(records: tf.Tensor, manifest: dict) -> tf.Tensor:
    """Records (batch,), each a clip's raw bytes → uint8 clips (batch, T, H, W)."""
    # The batch size from the records, not -1: a record of another size must fail here, not regroup the batch.
    shape = tf.concat([tf.shape(records), manifest["clip_shape"]], axis=0)
    clips = tf.reshape(tf.io.decode_raw(records, tf.uint8), shape)
    return tf.ensure_shape(clips, records.shape.concatenate(manifest["clip_shape"]))  # keep a static batch size


def _pairs_fn(data_cfg: DataConfig, manifest: dict):
    frames = manifest["clip_shape"][0]
    k, n = data_cfg.context_frames, data_cfg.predict_frames
    if data_cfg.protocol == "context" and k + n > frames:
        raise DataError(f"data.context_frames + data.predict_frames: got {k}+{n}, but the clips in {data_cfg.dir} have {frames} frames")

    def to_pairs(clips: tf.Tensor):
        x = tf.cast(clips, tf.float32)[..., None] / 255.0
        if data_cfg.protocol == "shift":
            return x[:, :-1], x[:, 1:]
        return x[:, :k], x[:, k : k + n]

    return to_pairs


def _reader(data_cfg: DataConfig, manifest: dict):
    """paths → TFRecordDataset of their serialized records."""
    compression = "GZIP" if manifest["compression"] == "gzip" else None
    buffer_size = data_cfg.read_buffer_kb * 1024
    return lambda paths: tf.data.TFRecordDataset(paths, compression_type=compression, buffer_size=buffer_size)


# --------------------------------------------------------------------------- files
def _split_entry(manifest: dict, data_cfg: DataConfig, split: str) -> dict:
    entry = manifest["splits"].get(split)
    if entry is None:
        raise DataError(f"split {split!r}: not in {data_cfg.dir}/manifest.json, expected one of {', '.join(manifest['splits'])}")
    return entry


def _shard_files(data_cfg: DataConfig, split: str) -> tuple[dict, list[str]]:
    """The manifest and the paths TF reads for a split: verified local/staged files or direct gs:// URLs."""
    manifest = load_manifest(data_cfg.dir)
    shards = _split_entry(manifest, data_cfg, split)["shards"]
    if not shards:
        raise DataError(f"split {split!r}: no clips in {data_cfg.dir} (data.split.{split} is 0)")
    _warn_unlisted(data_cfg.dir, manifest)
    if _staged(data_cfg):
        return manifest, stage(data_cfg, manifest, split)
    paths = _read_paths(data_cfg, manifest, split)
    if not _remote(data_cfg):  # hashing gs:// shards would read them twice; TF's CRC check covers direct reads
        for path, shard in zip(paths, shards):
            _verify(path, shard)
    return manifest, paths


def _remote(data_cfg: DataConfig) -> bool:
    """Shards behind fsspec (gs://): read by TF directly or staged; local and TF-only (ram://) ones are not."""
    return not storage.is_local(data_cfg.dir) and storage.scheme(data_cfg.dir) not in storage.TF_ONLY


def _staged(data_cfg: DataConfig) -> bool:
    return _remote(data_cfg) and data_cfg.stage


def _read_paths(data_cfg: DataConfig, manifest: dict, split: str) -> list[str]:
    """Where TF reads a split's shards: the staged copies or data.dir itself."""
    base = str(_stage_root(data_cfg, manifest)) if _staged(data_cfg) else data_cfg.dir
    return [storage.join(base, s["name"]) for s in _split_entry(manifest, data_cfg, split)["shards"]]


def _stage_root(data_cfg: DataConfig, manifest: dict) -> Path:
    return Path(os.path.expanduser(data_cfg.stage_dir)) / manifest["id"]


def _warn_unlisted(data_dir: str, manifest: dict) -> None:
    """Shard files the manifest does not list are never read (the manifest is the only entry point): say so."""
    listed = {s["name"] for entry in manifest["splits"].values() for s in entry["shards"]}
    extra = [n for n in storage.listdir(data_dir)
             if n.endswith((".tfrecord", ".tfrecord.gz")) and not n.startswith(".") and n not in listed]
    if extra:
        warnings.warn(f"{data_dir}: ignoring {len(extra)} shard file(s) not listed in manifest.json: {', '.join(extra[:5])}"
                      f"{' …' if len(extra) > 5 else ''} (only listed shards are read)", stacklevel=3)


_VERIFIED: set[tuple] = set()


def _verify(path: str, shard: dict, *, rehash: bool = False, fix: str = "run `nfp prepare` again") -> None:
    stamp = _stat(path)
    key = (path, shard["sha256"], stamp)
    if stamp is not None and key in _VERIFIED and not rehash:
        return
    try:
        digest, size = storage.sha256(path)
    except Exception as err:
        if isinstance(err, FileNotFoundError) or type(err).__name__ == "NotFoundError":
            raise DataError(f"shard {path}: missing; {fix}") from None
        raise
    if digest != shard["sha256"] or size != shard["bytes"]:
        _VERIFIED.discard(key)
        raise DataError(f"shard {path}: sha256 {digest[:12]}… ({size} bytes), expected {shard['sha256'][:12]}… ({shard['bytes']} bytes) from the manifest; {fix}")
    if stamp is not None:
        _VERIFIED.add(key)


def _stat(path: str) -> tuple | None:
    """(size, mtime) of a local file, to hash it once per change; None elsewhere: verify every time."""
    if not storage.is_local(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def stage(data_cfg: DataConfig, manifest: dict, split: str) -> list[str]:
    """Copy a split's shards from data.dir (gs://) to data.stage_dir/<manifest id>/ through fsspec, sha256-verified."""
    root = _stage_root(data_cfg, manifest)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.stage_dir: cannot create {root} ({err.strerror or err})") from None
    paths = []
    for shard in _split_entry(manifest, data_cfg, split)["shards"]:
        local, url = root / shard["name"], storage.join(data_cfg.dir, shard["name"])
        if local.is_file():
            try:
                _verify(str(local), shard)
                paths.append(str(local))
                continue
            except DataError:
                local.unlink()
        part = root / f".{shard['name']}.part-{uuid.uuid4().hex[:8]}"
        try:
            storage.get(url, part)
            digest, size = storage.sha256(str(part))
            if digest != shard["sha256"]:
                raise DataError(f"shard {url}: sha256 {digest[:12]}… ({size} bytes), expected {shard['sha256'][:12]}… from the manifest; run `nfp prepare` again")
            os.replace(part, local)
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"shard {url}: missing; run `nfp prepare` again") from None
        except Exception as err:
            raise DataError(f"shard {url}: cannot stage to {root} ({type(err).__name__}: {err})") from None
        finally:
            part.unlink(missing_ok=True)
        paths.append(str(local))
    return paths
