"""A training job's output dir (local or gs://): where each file goes, and reading back what an earlier attempt left.

<output_dir>/checkpoints/{best,last}.keras   backup/ (BackupAndRestore)   history.csv   images/epoch_NNN.png
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

from nfp import storage

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

    def file(self, name: str) -> str:
        """Any other file directly under the output dir (config.yaml, history.png, …)."""
        return self._join(name)

    def resume_epoch(self) -> int:
        """Epochs completed according to the BackupAndRestore metadata (0 without a backup)."""
        path = storage.join(self.backup, BACKUP_METADATA)
        if not storage.exists(path):
            return 0
        return int(json.loads(storage.read_bytes(path))["epoch"])


def trim_csv(path: str, keep_below: int) -> None:
    """Drop CSV rows of epochs >= `keep_below` (and a torn last line): a resumed run writes each epoch once."""
    if not storage.exists(path):
        return
    lines = storage.read_bytes(path).decode().splitlines(keepends=True)
    kept = lines[:1] + [
        line
        for line in lines[1:]
        if line.endswith("\n") and line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) < keep_below
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
