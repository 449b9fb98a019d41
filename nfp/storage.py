"""Files under a local path, file://, gs:// (fsspec/gcsfs) or TF-only schemes such as ram:// (tf.io.gfile).

Writes are atomic: local files go to a temporary name then os.replace; a GCS object only appears
once its upload completes, so it is written under its final name.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

TF_ONLY = {"ram"}  # TF filesystems fsspec does not know
_CHUNK = 1 << 20


def scheme(url: str) -> str:
    """ "file" for local paths and file://, else the part before "://"."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else "file"


def is_local(url: str) -> bool:
    return scheme(url) == "file"


def is_remote(url: str) -> bool:
    """Not on this machine's disk (gs://, ram://, …): other processes and hosts may see it, local tools cannot."""
    return not is_local(url)


def local_path(url: str) -> Path:
    """The local path of a local URL (file:// stripped, ~ expanded)."""
    return Path(os.path.expanduser(url.removeprefix("file://")))


def join(base: str, name: str) -> str:
    return str(local_path(base) / name) if is_local(base) else posixpath.join(base, name)


def filesystem(url: str):
    import fsspec

    options = {}
    if scheme(url) == "gs" and os.environ.get("STORAGE_EMULATOR_HOST"):
        options["token"] = "anon"  # the emulator takes no credentials
    elif scheme(url) == "gs":
        check_credentials(url)
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


_GCS_CREDENTIALS_FOUND = False


def check_credentials(*urls: str) -> None:
    """StorageError up front, in seconds, when gs:// urls are to be used without Google credentials (else gcsfs
    retries for minutes, then falls back to anonymous access)."""
    for url in urls:
        if scheme(url) == "gs" and not os.environ.get("STORAGE_EMULATOR_HOST"):
            _check_gcs_credentials(url)


def _check_gcs_credentials(url: str) -> None:
    """StorageError in seconds when no Google credentials exist (gcsfs would retry for minutes, then read anonymously)."""
    global _GCS_CREDENTIALS_FOUND
    if _GCS_CREDENTIALS_FOUND:
        return
    import google.auth
    import google.auth.exceptions

    try:
        google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError:
        from nfp.errors import StorageError

        raise StorageError(
            f"{url}: no Google Cloud credentials found; run `gcloud auth application-default login`, or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (VMs on Google Cloud use their service account)"
        ) from None
    _GCS_CREDENTIALS_FOUND = True


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(url: str) -> bool:
    if is_local(url):
        return local_path(url).exists()
    if scheme(url) in TF_ONLY:
        return _gfile().exists(url)
    fs, path = filesystem(url)
    fs.invalidate_cache()  # gcsfs caches listings; another process may have written since
    return fs.exists(path)


def is_dir(url: str) -> bool:
    if is_local(url):
        return local_path(url).is_dir()
    if scheme(url) in TF_ONLY:
        return _gfile().isdir(url)
    fs, path = filesystem(url)
    return fs.isdir(path)


def read_bytes(url: str) -> bytes:
    if is_local(url):
        return local_path(url).read_bytes()
    if scheme(url) in TF_ONLY:
        with _gfile().GFile(url, "rb") as f:
            return f.read()
    fs, path = filesystem(url)
    return fs.cat_file(path)


def makedirs(url: str) -> None:
    if is_local(url):
        local_path(url).mkdir(parents=True, exist_ok=True)
    elif scheme(url) in TF_ONLY:
        _gfile().makedirs(url)
    # object stores have no directories


def make_writable_dir(url: str) -> None:
    """Create the directory and prove a file can be made in it (local disk; object stores have no directories).
    OSError (NotADirectoryError, PermissionError, …) when not."""
    makedirs(url)
    if is_local(url):
        probe = local_path(url) / f".write-probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()


def output_dir_flag(out_dir: str | None, default: str, flag: str = "--out") -> str:
    """out_dir (or the default) once a directory could be created there; ConfigError naming the flag otherwise."""
    from nfp.errors import ConfigError

    target = str(out_dir or default)
    try:
        check_could_write(target)
    except OSError as err:
        key = flag if out_dir else "train.output_dir"
        raise ConfigError(f"{key}: cannot write to {target} ({err.strerror}: {err.filename})") from None
    return target


def check_could_write(url: str) -> None:
    """OSError unless a local directory could be created at url (nothing is created); remote urls pass."""
    import errno

    if not is_local(url):
        return
    existing = local_path(url).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "Permission denied", str(existing))


def put(local: Path, url: str) -> None:
    """Move a finished local file to url atomically (the local file is consumed)."""
    if is_local(url):
        os.replace(local, local_path(url))
        return
    if scheme(url) in TF_ONLY:
        tmp = f"{url}.tmp-{uuid.uuid4().hex[:8]}"
        _gfile().copy(str(local), tmp, overwrite=True)
        _gfile().rename(tmp, url, overwrite=True)
    else:
        fs, path = filesystem(url)
        fs.put_file(str(local), path)
    os.remove(local)


def write_bytes(url: str, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write data to url atomically, through a temporary file in tmp_dir (default: beside a local url,
    so the final rename never crosses filesystems; the system temp dir for a remote one)."""
    import tempfile

    if tmp_dir is None:
        tmp_dir = local_path(url).parent if is_local(url) else Path(tempfile.gettempdir())
        makedirs(str(tmp_dir) if is_local(url) else posixpath.dirname(url))
    tmp = Path(tmp_dir) / f".{posixpath.basename(url)}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(data)
    put(tmp, url)


def rename(src: str, dst: str) -> None:
    """Move src to dst on the same filesystem, replacing dst (atomic on local disk; on GCS dst appears whole)."""
    if is_local(src):
        os.replace(local_path(src), local_path(dst))
    elif scheme(src) in TF_ONLY:
        _gfile().rename(src, dst, overwrite=True)
    else:
        fs, path = filesystem(src)
        fs.mv(path, filesystem(dst)[1])


def publish(local_dir: Path, out_dir: str) -> None:
    """Copy the finished files of local_dir into out_dir (local or remote), each written atomically."""
    makedirs(out_dir)
    for path in sorted(Path(local_dir).iterdir()):
        write_bytes(join(out_dir, path.name), path.read_bytes())


def output_path(out_dir: str, name: str):
    """Where `name` lands in out_dir: a Path when local, the URL string when remote (Path would mangle `gs://`)."""
    return local_path(out_dir) / name if is_local(out_dir) else f"{out_dir.rstrip('/')}/{name}"


def get(url: str, local: Path) -> None:
    """Copy url to the local path (not atomic: callers download to a temporary name)."""
    if scheme(url) in TF_ONLY:
        _gfile().copy(url, str(local), overwrite=True)
    elif is_local(url):
        import shutil

        shutil.copyfile(local_path(url), local)
    else:
        fs, path = filesystem(url)
        fs.get_file(path, str(local))


def remove(url: str) -> None:
    if is_local(url):
        local_path(url).unlink(missing_ok=True)
    elif scheme(url) in TF_ONLY:
        if _gfile().exists(url):
            _gfile().remove(url)
    else:
        fs, path = filesystem(url)
        fs.rm_file(path)


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under a directory or prefix; [] when it does not exist."""
    if is_local(url):
        p = local_path(url)
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    if scheme(url) in TF_ONLY:
        return sorted(_gfile().listdir(url)) if _gfile().isdir(url) else []
    fs, path = filesystem(url)
    fs.invalidate_cache()
    try:
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def sha256(url: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    if is_local(url):
        f = open(local_path(url), "rb")
    elif scheme(url) in TF_ONLY:
        f = _gfile().GFile(url, "rb")
    else:
        fs, path = filesystem(url)
        f = fs.open(path, "rb")
    with f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --------------------------------------------------------------------------- objects with generations (gs://)
# GCS numbers each version of an object (its generation) and applies a request only if `ifGenerationMatch` still
# holds (0: no live object): create-only and compare-and-swap, atomic across hosts. nfp holds gs:// output dirs so.


def has_generations(url: str) -> bool:
    return scheme(url) == "gs"


def _gcs_object(url: str):
    fs, path = filesystem(url)
    bucket, key, _ = fs.split_path(path)
    return fs, path, bucket, key


def create_object(url: str, data: bytes, metadata: dict[str, str]) -> str:
    """Create the object at url only if there is none; its generation. FileExistsError (GCS's 412) if one is."""
    fs, path, _, _ = _gcs_object(url)
    created = fs.pipe_file(path, data, metadata=metadata, mode="create")
    fs.invalidate_cache(path)
    return str(created["generation"])


@dataclass(frozen=True)
class ObjectVersion:
    generation: str  # a new one for each upload
    metageneration: str  # a new one for each metadata update of that upload
    metadata: dict[str, str]  # custom metadata


def object_version(url: str) -> ObjectVersion | None:
    """The live version of the object at url; None when there is none."""
    fs, _, bucket, key = _gcs_object(url)
    try:
        found = fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True)
    except FileNotFoundError:
        return None
    return ObjectVersion(str(found["generation"]), str(found["metageneration"]), dict(found.get("metadata") or {}))


def update_metadata_if(url: str, generation: str, metadata: dict[str, str]) -> None:
    """Set custom metadata on url's object while it is still `generation`; FileExistsError if it was replaced,
    FileNotFoundError if it is gone."""
    fs, _, bucket, key = _gcs_object(url)
    fs.call("PATCH", "b/{}/o/{}", bucket, key, json={"metadata": metadata}, ifGenerationMatch=generation)


def remove_if(url: str, generation: str, metageneration: str | None = None) -> None:
    """Delete url's object only if it is still `generation` (and `metageneration`: its metadata unchanged);
    FileExistsError if it changed, FileNotFoundError if it is gone."""
    fs, path, bucket, key = _gcs_object(url)
    unchanged = {"ifMetagenerationMatch": metageneration} if metageneration else {}
    try:
        fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=generation, **unchanged)
    finally:
        fs.invalidate_cache(path)
