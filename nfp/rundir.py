"""A training job's output dir (local or gs://): where each file goes, reading back what an earlier attempt left,
and holding it against a second job.

<output_dir>/checkpoints/{best,last}.keras   backup/ (BackupAndRestore)   history.csv   images/epoch_NNN.png
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import socket
from dataclasses import dataclass

from nfp import storage
from nfp.errors import TrainingError

BACKUP_METADATA = "training_metadata.json"  # written by keras.callbacks.BackupAndRestore


@dataclass(frozen=True)
class RunDir:
    root: str

    def _join(self, *parts: str) -> str:
        path = self.root
        for part in parts:
            path = storage.join(path, part)
        return path

    @property
    def checkpoints(self) -> str:
        return self._join("checkpoints")

    @property
    def best(self) -> str:
        return self._join("checkpoints", "best.keras")

    @property
    def last(self) -> str:
        return self._join("checkpoints", "last.keras")

    @property
    def backup(self) -> str:
        return self._join("backup")

    @property
    def csv(self) -> str:
        return self._join("history.csv")

    @property
    def images(self) -> str:
        return self._join("images")

    @property
    def tensorboard(self) -> str:
        return self._join("tensorboard")

    def file(self, name: str) -> str:
        """Any other file directly under the output dir (config.yaml, history.png, …)."""
        return self._join(name)

    def resume_epoch(self) -> int:
        """Epochs completed according to the BackupAndRestore metadata (0 without a backup)."""
        path = storage.join(self.backup, BACKUP_METADATA)
        if not storage.exists(path):
            return 0
        return int(json.loads(storage.read_bytes(path))["epoch"])


LOCK = ".nfp-train.lock"


@contextlib.contextmanager
def held(run_dir: RunDir):
    """Hold a local output dir for this job: a second `nfp train` on it stops with one line naming the holder.

    An flock on <output_dir>/.nfp-train.lock: the kernel releases it when the holder exits or is killed, so a
    killed job never leaves it stuck. Output dirs on object stores (gs://) are not held (no flock there)."""
    if not storage.is_local(run_dir.root):
        yield
        return
    import fcntl

    path = storage.local_path(run_dir.root) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise TrainingError(
                f"train.output_dir {run_dir.root}: in use by another nfp train ({holder}); wait for it to end, "
                "or use another train.output_dir"
            ) from None
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {since}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def trim_csv(path: str, epochs_done: int) -> None:
    """Keep the CSV rows of epochs 1..`epochs_done` (the backup's), dropping later ones and a torn last line: a
    resumed run writes each epoch once."""
    if not storage.exists(path):
        return
    lines = storage.read_bytes(path).decode().splitlines(keepends=True)
    kept = lines[:1] + [
        line
        for line in lines[1:]
        if line.endswith("\n") and line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) <= epochs_done
    ]
    if kept != lines:
        storage.write_bytes(path, "".join(kept).encode())


def read_csv_history(path: str) -> dict[str, list[float]]:
    """history.csv → {"loss": [...], ...}, one value per epoch in order."""
    if not storage.exists(path):
        return {}
    out: dict[str, list[float]] = {}
    for row in csv.DictReader(io.StringIO(storage.read_bytes(path).decode())):
        for key, value in row.items():
            if key != "epoch":
                out.setdefault(key, []).append(float(value) if value not in ("", "NA") else float("nan"))
    return out
