"""Shard integrity: the files TF reads for a split, each matching its manifest entry, and the shard named when not.

Shards are verified against the manifest's sha256 before TF reads them, because TF's own CRC
errors (tf.errors.DataLossError "corrupted record at N") do not name the file. gs:// shards are
either read by TF directly (production; TF's CRC check still applies) or staged to a local dir
through gcsfs (data.stage) and verified there. Where TF trips on a shard anyway (a direct gs:// read,
a shard changed after the check: a bad CRC, records of another size, fewer records than the
manifest), `naming_bad_shards` hashes the shards to name the culprit.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
import warnings
import weakref
from pathlib import Path

from nfp import storage
from nfp.config import DataConfig
from nfp.data.manifest import Manifest
from nfp.errors import DataError

# Besides TF's record check (DataLossError, "corrupted record"), what a shard with other valid records makes TF
# raise: a record of another size (when decoding), or fewer clips than the manifest counts (assert_cardinality).
_SHARD_SYMPTOMS = (
    "DecodeRaw requires input strings to all be the same size",
    "Input to reshape is a tensor with",
    "Input dataset was expected to contain",
)


def readable_paths(data_cfg: DataConfig, manifest: Manifest, split: str) -> list[str]:
    """The paths TF reads for a split: verified local/staged files or direct gs:// URLs."""
    shards = manifest.shards(split)
    if not shards:
        raise DataError(f"split {split!r}: no clips in {data_cfg.dir} (data.split.{split} gave it none)")
    _warn_unlisted(manifest)
    if _staged(data_cfg):
        return stage(data_cfg, manifest, split)
    paths = _read_paths(data_cfg, manifest, split)
    if not _remote(data_cfg):  # hashing gs:// shards would read them twice; TF's CRC check covers direct reads
        for path, shard in zip(paths, shards):
            _verify(path, shard)
    return paths


@contextlib.contextmanager
def naming_bad_shards(data_cfg: DataConfig, manifest: Manifest, *splits: str):
    """Turn the errors a shard that no longer matches its manifest makes TF raise, which name no file, into a
    DataError naming that shard; TF's own error stands where every shard matches (not a shard's fault)."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError) as original:
        if not isinstance(original, tf.errors.DataLossError) and not any(s in str(original) for s in _SHARD_SYMPTOMS):
            raise
        print(
            f"nfp: reading a record failed ({type(original).__name__}); hashing the {'/'.join(splits)} shards to name "
            "the one that changed",
            file=sys.stderr,
        )
        try:
            bad = _first_bad_shard(data_cfg, manifest, splits)
        except Exception as err:  # noqa: BLE001 - naming is best effort: TF's error must not be lost to it
            print(f"nfp: could not hash the shards ({type(err).__name__}: {err})", file=sys.stderr)
            raise original from None
        if bad is not None:
            raise bad from None
        raise


def _first_bad_shard(data_cfg: DataConfig, manifest: Manifest, splits) -> DataError | None:
    """The error naming the first shard whose bytes differ from the manifest, hashed afresh; None if all match."""
    # A bad staged copy may have a good source: staging re-checks its copies and fetches bad ones again.
    fix = "run again to stage it afresh" if _staged(data_cfg) else "run `nfp prepare` again"
    for split in splits:
        for path, shard in zip(_read_paths(data_cfg, manifest, split), manifest.shards(split)):
            try:
                _verify(path, shard, rehash=True, fix=fix)  # a flipped byte keeps size and maybe mtime: trust no memo
            except DataError as bad:
                return bad
    return None


# --------------------------------------------------------------------------- where the shards are read
def _remote(data_cfg: DataConfig) -> bool:
    """Shards behind fsspec (gs://): read by TF directly or staged; local and TF-only (ram://) ones are not."""
    return storage.is_remote(data_cfg.dir) and storage.scheme(data_cfg.dir) not in storage.TF_ONLY


def _staged(data_cfg: DataConfig) -> bool:
    return _remote(data_cfg) and data_cfg.stage


def _read_paths(data_cfg: DataConfig, manifest: Manifest, split: str) -> list[str]:
    """Where TF reads a split's shards: the staged copies or data.dir itself."""
    base = str(_stage_root(data_cfg, manifest)) if _staged(data_cfg) else data_cfg.dir
    return [storage.join(base, s["name"]) for s in manifest.shards(split)]


def _stage_root(data_cfg: DataConfig, manifest: Manifest) -> Path:
    return Path(os.path.expanduser(data_cfg.stage_dir)) / manifest.id


_LISTED: weakref.WeakSet[Manifest] = weakref.WeakSet()


def _warn_unlisted(manifest: Manifest) -> None:
    """Shard files the manifest does not list are never read (the manifest is the only entry point): say so,
    once per loaded manifest, i.e. per job (listing a gs:// prefix is a round trip)."""
    if manifest in _LISTED:
        return
    _LISTED.add(manifest)
    listed = manifest.shard_names()
    extra = [
        n
        for n in storage.listdir(manifest.dir)
        if n.endswith((".tfrecord", ".tfrecord.gz")) and not n.startswith(".") and n not in listed
    ]
    if extra:
        warnings.warn(
            f"{manifest.dir}: ignoring {len(extra)} shard file(s) not listed in manifest.json: {', '.join(extra[:5])}"
            f"{' …' if len(extra) > 5 else ''} (only listed shards are read)",
            stacklevel=4,
        )


# --------------------------------------------------------------------------- checking bytes
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
        raise DataError(
            f"shard {path}: sha256 {digest[:12]}… ({size} bytes), "
            f"expected {shard['sha256'][:12]}… ({shard['bytes']} bytes) from the manifest; {fix}"
        )
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


def stage(data_cfg: DataConfig, manifest: Manifest, split: str) -> list[str]:
    """Copy a split's shards from data.dir (gs://) to data.stage_dir/<manifest id>/ through fsspec, sha256-verified."""
    root = _stage_root(data_cfg, manifest)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.stage_dir: cannot create {root} ({err.strerror or err})") from None
    paths = []
    for shard in manifest.shards(split):
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
                raise DataError(
                    f"shard {url}: sha256 {digest[:12]}… ({size} bytes), "
                    f"expected {shard['sha256'][:12]}… from the manifest; run `nfp prepare` again"
                )
            os.replace(part, local)
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"shard {url}: missing; run `nfp prepare` again") from None
        except Exception as err:  # noqa: BLE001 - gcsfs/OS errors: any failed copy is a shard that cannot be staged
            raise DataError(f"shard {url}: cannot stage to {root} ({type(err).__name__}: {err})") from None
        finally:
            part.unlink(missing_ok=True)
        paths.append(str(local))
    return paths
