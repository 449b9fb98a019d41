"""A data set's identity: what makes the data a config prepares the same as a data dir holds — the config keys that
determine the shards' bytes and, for your own files, their names under data.path, sizes and content hashes (each
file hashed once until its size or time changes) — and, when it is not the same, what differs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import posixpath
import types

from nfp import storage
from nfp.config import DataConfig
from nfp.data import files
from nfp.data.manifest import Manifest
from nfp.errors import redact


def content_config(data_cfg: DataConfig, entries: list | None = None) -> dict:
    """The config keys that determine the shards' bytes (compared to reuse a prepared dir); for your own files also
    their records (`entries`, listed now when not given): [name under data.path, size, sha256] each, so that a file
    added, removed or rewritten is a new data set, and a copy or a touch is not."""
    keys = ["source", "frames", "seed", "num_shards", "shard_mb", "num_workers", "compression", "channels"]
    keys += {
        "download": ["num_clips", "url", "sha256", "layout"],
        "generate": ["num_clips", "digit_bank", "digit_size", "digits_per_clip", "step_length", "background"],
    }.get(data_cfg.source, ["path", "layout", "clip_stride", "frame_step", "on_bad_file"])
    out = {k: getattr(data_cfg, k) for k in keys}
    out["frame_size"] = list(data_cfg.frame_hw)
    out["split"] = dataclasses.asdict(data_cfg.split)
    if "url" in out:
        out["url"] = redact(out["url"])  # the manifest is logged and copied: a URL's user:password stays out of it
    if "path" in out:
        out["path"] = [redact(p) for p in out["path"]]
        out["clip_stride"] = data_cfg.clip_stride or data_cfg.frames
        entries = files.list_entries(data_cfg) if entries is None else entries
        out["files"], _ = remember_hashes(data_cfg, entries)
    return out


HASHES = ".nfp-file-hashes.json"  # in data.dir: {url: [size, time, sha256]} of data.path's files, hashed once each
_HASHED: dict[str, list] = {}  # … and in this process, before data.dir exists


def remember_hashes(data_cfg: DataConfig, entries: list) -> tuple[list[list], dict]:
    """files.content_records of `entries`, remembering each file's hash (in the process, and in data.dir once it is
    there) so that a file is read again only when its size or modification time changes."""
    url = storage.join(data_cfg.dir, HASHES)
    try:
        saved = json.loads(storage.read_bytes(url)) if storage.exists(url) else {}
    except ValueError:
        saved = {}  # a memory cut short: hash again
    known = {**saved, **_HASHED}
    records, seen = content_records(entries, known)
    _HASHED.update(seen)
    if seen != {k: saved.get(k) for k in seen} and storage.exists(data_cfg.dir):
        with contextlib.suppress(OSError):  # a memory only: a read-only data dir hashes again next time
            storage.write_bytes(url, json.dumps({**saved, **seen}).encode())
    return records, seen


# Keys content_config gained after data dirs were prepared without them, at the value those dirs were made with.
_ADDED_KEYS = {"download": {"layout": "TNHW", "channels": 1}, "generate": {"channels": 1, "background": "none"}}


def config_of(manifest: Manifest) -> dict:
    """The content config `manifest` was prepared from, with keys added since at the values it was made with."""
    config = dict(manifest.content.get("config", {}))
    if "image_size" in config and "frame_size" not in config:  # square frames, before data.frame_size
        config["frame_size"] = [config.pop("image_size")] * 2
    return {**_ADDED_KEYS.get(config.get("source"), {}), **config}


def same_config(manifest: Manifest, config: dict) -> bool:
    return not what_differs(
        config_of(manifest), config, skipped=bool(manifest.content.get("source", {}).get("skipped"))
    )


# Not the data set's identity: where the files are (a copy, a trailing slash, an absolute path name the same files),
# and data.on_bad_file when nothing was skipped.
_SPELLING = ("path",)


def what_differs(old: dict, new: dict, *, skipped: bool = True) -> list[str]:
    """How content config `new` makes another data set than `old` (a manifest's, that skipped files or not):
    "data.seed: 0 → 7" per key that differs, and the files added, removed or rewritten under data.path."""
    ignored = {*_SPELLING, "files", *(() if skipped else ("on_bad_file",))}
    out = [
        f"data.{key}: {_shown(old.get(key))} → {_shown(new.get(key))}"
        for key in sorted((set(old) | set(new)) - ignored)
        if old.get(key) != new.get(key)
    ]
    if "files" in old or "files" in new:
        out += _files_differ(old.get("files"), new.get("files"), new)
    return out


def _files_differ(old, new, config: dict) -> list[str]:
    """The files under data.path by which `new` records differ from `old` (records, or the digest of names, sizes
    and times that data dirs prepared before content hashes hold)."""
    if isinstance(old, str):  # prepared before: judged as then, from the files as they are now
        listed = types.SimpleNamespace(path=list(config.get("path", [])), source=config.get("source"))
        entries = files.list_entries(listed)  # what list_entries reads of a data config
        return [] if old == fingerprint(entries) else ["the files under data.path (one added, removed or rewritten)"]
    before, after = {r[0]: r[1:] for r in old or []}, {r[0]: r[1:] for r in new or []}
    changes = [
        *(f"{name} added" for name in sorted(set(after) - set(before))),
        *(f"{name} removed" for name in sorted(set(before) - set(after))),
        *(f"{name} rewritten" for name in sorted(set(before) & set(after)) if before[name] != after[name]),
    ]
    if not changes:
        return []
    shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
    return [f"the files under data.path ({shown})"]


def _shown(value) -> str:
    if isinstance(value, dict):  # data.split
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items() if v not in (None, [])) + "}"
    return "(not set)" if value is None else str(value)


def fingerprint(entries: list[files.Entry]) -> str:
    """The identity of data.path's files before nfp hashed their content: names, sizes and modification times (a
    data dir prepared then records this; `what_differs` still recognises it)."""
    import hashlib

    digest = hashlib.sha256()
    for entry in entries:
        fs, path = storage.filesystem(entry.url)
        info = sorted(fs.ls(path, detail=True), key=lambda i: i["name"]) if fs.isdir(path) else [fs.info(path)]
        for item in info:
            stamp = item.get("mtime") or item.get("updated") or item.get("LastModified") or ""
            digest.update(f"{item['name']}\0{item.get('size')}\0{stamp}\n".encode())
    return digest.hexdigest()[:16]


def content_records(entries: list[files.Entry], known: dict) -> tuple[list[list], dict]:
    """([name under data.path, size, sha256 (16 hex)] of every file, as the data set's identity: what a copy keeps
    and a rewrite changes; {url: [size, time, sha256]} to remember). A file whose size and modification time are in
    `known` (the data dir's memory of earlier hashes) is not read again: only new or changed files are hashed."""
    records, seen = [], {}
    for entry in entries:
        folder, items = _items(entry)
        for item in items:
            url = _url_like(entry.url, item["name"])
            name = f"{entry.name}/{posixpath.basename(item['name'])}" if folder else entry.name
            size, stamp = item.get("size"), str(item.get("mtime") or item.get("updated") or item.get("LastModified"))
            cached = known.get(url)
            sha = cached[2] if cached and cached[:2] == [size, stamp] else _sha(url)
            records.append([name, size, sha])
            seen[url] = [size, stamp, sha]
    return records, seen


def _sha(url: str) -> str:
    """A file's sha256 (16 hex), or "unreadable": indexing then refuses or skips it, naming it, in one line."""
    try:
        return storage.sha256(url)[0][:16]
    except OSError:
        return "unreadable"


def _items(entry: files.Entry) -> tuple[bool, list[dict]]:
    """(whether the entry is a folder of frames, what fsspec says of each of its files)."""
    fs, path = storage.filesystem(entry.url)
    if not fs.isdir(path):
        return False, [fs.info(path)]
    return True, sorted((i for i in fs.ls(path, detail=True) if i.get("type") != "directory"), key=lambda i: i["name"])


def _url_like(entry_url: str, path: str) -> str:
    """`path` as fsspec lists it, as a URL of the same scheme as `entry_url`."""
    if "://" in entry_url and "://" not in path:
        return entry_url.partition("://")[0] + "://" + path.lstrip("/")
    return path
