"""Fetch mnist_test_seq.npy ((20, 10000, 64, 64) uint8, time-major; or any .npy of clips in data.layout) from any
allowed fsspec URL, verified and cached."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

from nfp import storage
from nfp.config import MOVING_MNIST_URL, DataConfig
from nfp.data import npy
from nfp.errors import DataError, redact

# Known files: 20·10000·64·64 uint8 = 819,200,000 bytes + a 96-byte .npy header, and the md5 torchvision
# pins for the same file (datasets.MovingMNIST). Its sha256 could not be taken offline: data.sha256 adds it.
_TORONTO = {"size_bytes": 819_200_096, "sha256": None, "md5": "be083ec986bfe91a449d63653c411eb2"}
KNOWN = {MOVING_MNIST_URL: _TORONTO, MOVING_MNIST_URL.replace("http://", "https://"): _TORONTO}


def fetch(data_cfg: DataConfig, *, progress: bool = True) -> Path:
    """A local, verified copy of data_cfg.url: the file itself when local, else a cached download."""
    url = data_cfg.url
    scheme = storage.scheme(url)
    if scheme not in data_cfg.allowed_schemes:
        raise DataError(
            f"data.url: scheme {scheme!r} of {url} is not allowed; data.allowed_schemes: {', '.join(data_cfg.allowed_schemes)}"
        )
    known = KNOWN.get(url, {})
    digests = {"sha256": data_cfg.sha256 or known.get("sha256"), "md5": known.get("md5")}
    size = data_cfg.size_bytes or known.get("size_bytes")
    if storage.is_local(url):
        path = storage.local_path(url)
        npy.check_file(path, f"data.url {path}", "expected a .npy file such as mnist_test_seq.npy")
        _verify(path, url, digests, size, data_cfg.layout)
        return path

    cached = Path(os.path.expanduser(data_cfg.cache_dir)) / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16]
    cached = cached / (url.rstrip("/").rsplit("/", 1)[-1] or "download.npy")
    if cached.is_file():
        try:
            _verify(cached, url, digests, size, data_cfg.layout)
            return cached
        except DataError:
            cached.unlink()  # a bad cache is re-downloaded, never used
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = cached.with_name(f"{cached.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        served = _download(url, part, progress)
        if served is not None and part.stat().st_size != served:
            raise DataError(f"data.url: {url} sent {part.stat().st_size} of {served} bytes (transfer interrupted)")
        _verify(part, url, digests, size, data_cfg.layout)
        os.replace(part, cached)
        _remember_digests(cached)
    finally:
        part.unlink(missing_ok=True)
    return cached


def _download(url: str, dest: Path, progress: bool) -> int | None:
    """Copy url to dest with a byte progress bar; returns the size the server announced, if any."""
    from fsspec.callbacks import TqdmCallback

    bar = TqdmCallback(
        tqdm_kwargs={"unit": "B", "unit_scale": True, "desc": f"download {redact(url)}", "disable": not progress}
    )
    try:
        fs, path = storage.filesystem(url)
        fs.get_file(path, str(dest), callback=bar)
    except FileNotFoundError:
        raise DataError(f"data.url: {url} not found (404)") from None
    except Exception as err:  # noqa: BLE001 - aiohttp/gcsfs/OS errors: unreachable host, refused, closed early
        raise DataError(f"data.url: cannot download {url} ({type(err).__name__}: {err})") from None
    finally:
        bar.close()
    return bar.size


def _verify(path: Path, url: str, digests: dict, size: int | None, layout: str) -> None:
    """Size, digests (where known) and that it is a whole .npy of a 4-D uint8 array; DataError naming url otherwise.
    (Which axis is time is data.layout's business, checked when prepare opens the clips: a good cached file is
    kept whatever the config says about it.)"""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DataError(f"data.url: {url} is {actual} bytes, expected {size} (data.size_bytes or the known size)")
    for algo, expected in digests.items():
        if expected is not None and file_digest(path, algo) != expected.lower():
            source = "data.sha256" if algo == "sha256" else "the known md5 of this URL"
            raise DataError(
                f"data.url: {url} has {algo} {file_digest(path, algo)}, expected {expected.lower()} ({source})"
            )
    npy.open_array(path, f"data.url {redact(url)}", layout)


def open_clips(path: Path, data_cfg: DataConfig) -> np.ndarray:
    """The fetched file's clips as a memory-mapped (time, clips, H, W, C) uint8 view, read in data.layout."""
    return npy.open_clips(path, data_cfg.layout, f"data.url {redact(data_cfg.url)}")


_DIGESTS: dict[tuple, dict] = {}


def file_digest(path: Path, algo: str) -> str:
    """sha256 or md5 of a local file (both from one read), remembered per (path, size, mtime) and in a
    sidecar next to cached downloads, so an 800 MB file is hashed once."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        try:
            record = json.loads(_sidecar(path).read_text())
            if [record["size"], record["mtime_ns"]] == [st.st_size, st.st_mtime_ns]:
                _DIGESTS[key] = {"sha256": record["sha256"], "md5": record["md5"]}
        except (OSError, ValueError, KeyError):
            pass
    if key not in _DIGESTS:
        hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                for h in hashes.values():
                    h.update(chunk)
        _DIGESTS[key] = {name: h.hexdigest() for name, h in hashes.items()}
    return _DIGESTS[key][algo]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".digests.json")


def _remember_digests(path: Path) -> None:
    st = path.stat()
    record = {
        "sha256": file_digest(path, "sha256"),
        "md5": file_digest(path, "md5"),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    _sidecar(path).write_text(json.dumps(record))
