"""The offline backend: a durable backlog of what a run could not log, and its replay into the run."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from nfp import storage
from nfp.errors import first_line
from nfp.tracking.logger import RunLogger, clean_params, clean_tags, scalars
from nfp.tracking.runs import server_answers

log = logging.getLogger(__name__)

BACKLOG_DIR = "tracking_backlog"


def _lost_with_a_warning(method):
    """An Offline method whose failure (a full disk, an unreachable bucket) loses that record with a warning, the
    first time, not the training."""

    @functools.wraps(method)
    def call(self: Offline, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must not kill training
            if not self._failed:
                self._failed = True
                warnings.warn(
                    f"tracking backlog {self.url} could not be written ({first_line(err, 160)}): the "
                    f"{method.__name__} record is lost, and so is any later one that fails",
                    stacklevel=4,
                )

    return call


class Offline(RunLogger):
    """The backlog of a run whose server is gone: record N is `NNNNNN.json` plus its files in `NNNNNN/`.

    The files are written first, the JSON last and atomically (nfp.storage: a temporary name then a rename, or a
    GCS object that appears whole): a record exists only complete. It holds copies, never a path to the caller's
    (often temporary) files, so it can be replayed after the process, or the VM, is gone.
    """

    active = True

    def __init__(self, url: str, run_id: str | None = None):
        self.url = url
        self.run_id = run_id
        self._next: int | None = None
        self._failed = False

    @_lost_with_a_warning
    def log_params(self, params: dict) -> None:
        self._write({"kind": "params", "params": clean_params(params)})

    @_lost_with_a_warning
    def set_tags(self, tags: dict) -> None:
        self._write({"kind": "tags", "tags": clean_tags(tags)})

    @_lost_with_a_warning
    def log_metrics(self, metrics: dict, step: int) -> None:
        self._write({"kind": "metrics", "metrics": scalars(metrics), "step": step})

    @_lost_with_a_warning
    def log_artifact(self, local_path, artifact_path: str | None = None) -> None:
        src = Path(local_path)
        if src.is_dir():
            files = {f"{src.name}/{p.relative_to(src).as_posix()}": p for p in sorted(src.rglob("*")) if p.is_file()}
        else:
            files = {src.name: src}
        self._write({"kind": "artifact", "name": src.name, "artifact_path": artifact_path}, files)

    @_lost_with_a_warning
    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self._write({"kind": "image", "key": key, "step": step}, {"image.npy": _npy(np.asarray(image, np.uint8))})

    @_lost_with_a_warning
    def log_dataset(self, name: str, digest: str, source: str, clip_shape: list, counts: dict) -> None:
        self._write({"kind": "dataset", "dataset": [name, digest, source, list(clip_shape), dict(counts)]})

    @_lost_with_a_warning
    def log_model(self, model, input_example, register_as=None, horizon=None, alias=None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp, "model.keras")
            model.save(saved)
            self._write(
                {"kind": "model", "register_as": register_as, "horizon": horizon, "alias": alias},
                {"model.keras": saved, "input_example.npy": _npy(np.asarray(input_example))},
            )

    # -- the records
    def _write(self, record: dict, files: dict[str, bytes | Path] | None = None) -> None:
        files = files or {}
        name = f"{self._take_number():06d}"
        for rel, data in files.items():
            content = data if isinstance(data, bytes) else Path(data).read_bytes()
            storage.write_bytes(storage.join(self.url, f"{name}/{rel}"), content)
        record = {**record, "files": sorted(files)}
        storage.write_bytes(storage.join(self.url, f"{name}.json"), json.dumps(record).encode())  # last: complete

    def _take_number(self) -> int:
        if self._next is None:  # after every record or half-written folder already there
            numbers = [int(n.split(".")[0]) for n in storage.listdir(self.url) if n.split(".")[0].isdigit()]
            self._next = max(numbers, default=0) + 1
        number, self._next = self._next, self._next + 1
        return number

    def records(self) -> list[tuple[str, dict]]:
        """(name, record) of each complete record, oldest first; half-written ones (no JSON) are removed."""
        names = [n for n in storage.listdir(self.url) if not n.startswith(".")]
        complete = sorted((n.removesuffix(".json") for n in names if n.endswith(".json")), key=int)
        for orphan in set(names) - set(complete) - {f"{n}.json" for n in complete}:
            _remove_tree(storage.join(self.url, orphan))
        return [(n, json.loads(storage.read_bytes(storage.join(self.url, f"{n}.json")))) for n in complete]

    def files_of(self, name: str, record: dict, tmp: str) -> Path:
        """A local directory holding the record's files (downloaded into tmp when the backlog is remote)."""
        folder = storage.join(self.url, name)
        if storage.is_local(folder):
            return storage.local_path(folder)
        for rel in record["files"]:
            local = Path(tmp, rel)
            local.parent.mkdir(parents=True, exist_ok=True)
            storage.get(storage.join(folder, rel), local)
        return Path(tmp)

    def remove(self, name: str) -> None:
        storage.remove(storage.join(self.url, f"{name}.json"))  # first: from here on the record is gone whole
        _remove_tree(storage.join(self.url, name))

    def clear(self) -> None:
        _remove_tree(self.url)


def _remove_tree(url: str) -> None:
    if storage.is_local(url):
        path = storage.local_path(url)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    elif storage.scheme(url) in storage.TF_ONLY:
        import tensorflow as tf

        if tf.io.gfile.isdir(url):
            tf.io.gfile.rmtree(url)
        elif tf.io.gfile.exists(url):
            tf.io.gfile.remove(url)
    else:
        fs, path = storage.filesystem(url)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)
        fs.invalidate_cache()


def replay_backlog(online) -> None:
    """Log what an earlier attempt could not, record by record, each deleted once logged. A server that fails
    again stops the replay (that record and the rest stay for the next attempt); a record the server refuses while
    it answers would fail every time, so it is dropped with a warning."""
    backlog = Offline(online.backlog)
    records = backlog.records()
    for done, (name, record) in enumerate(records):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                files = backlog.files_of(name, record, tmp)
            except Exception as err:  # noqa: BLE001 - the state dir's store, not the record: keep it for next time
                warnings.warn(f"tracking backlog {backlog.url} could not be read ({first_line(err, 160)}): "
                              f"{len(records) - done} record(s) kept for the next attempt", stacklevel=3)  # fmt: skip
                return
            try:
                method, args = _replay_call(record, files, online.model_flavor)
            except Exception as err:  # noqa: BLE001 - an unreadable record must not block the others
                warnings.warn(
                    f"tracking backlog record {name} unreadable ({first_line(err, 160)}): dropped", stacklevel=3
                )
                backlog.remove(name)
                continue
            try:
                with online._failures_raise():
                    getattr(online, method)(*args)
            except Exception as err:  # noqa: BLE001 - the server, or this record
                if server_answers(online.run_id):
                    warnings.warn(
                        f"tracking backlog record {name} ({record['kind']}) refused by the tracking server "
                        f"({first_line(err, 160)}): dropped",
                        stacklevel=3,
                    )
                else:
                    online.go_offline(f"replaying {record['kind']}", err)
                    log.info("replayed %d of %d tracking records from %s", done, len(records), backlog.url)
                    return
        backlog.remove(name)
    backlog.clear()
    if records:
        log.info("replayed %d tracking records from %s", len(records), backlog.url)


def _replay_call(record: dict, files: Path, model_flavor) -> tuple[str, tuple]:
    """The Online method and arguments that log `record`, its files read from `files` (a model's by
    `model_flavor.load_saved`)."""
    kind = record["kind"]
    if kind == "params":
        return "log_params", (record["params"],)
    if kind == "tags":
        return "set_tags", (record["tags"],)
    if kind == "metrics":
        return "log_metrics", (record["metrics"], record["step"])
    if kind == "artifact":
        return "log_artifact", (str(files / record["name"]), record["artifact_path"])
    if kind == "image":
        return "log_image", (np.load(files / "image.npy"), record["key"], record["step"])
    if kind == "dataset":
        return "log_dataset", tuple(record["dataset"])
    if kind == "model":
        if model_flavor is None:
            raise ValueError("a model record, and this run was started without a model_flavor to read it")
        model = model_flavor.load_saved(files / "model.keras")
        example = np.load(files / "input_example.npy")
        # records from before horizon and alias have neither: the defaults
        return "log_model", (model, example, record["register_as"], record.get("horizon"), record.get("alias"))
    raise ValueError(f"unknown record kind {kind!r}")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
