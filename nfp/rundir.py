"""A training job's output dir (local or gs://): where each file goes, reading back what an earlier attempt left,
and holding it against a second job.

<output_dir>/checkpoints/{best,last}.keras   backup/ (BackupAndRestore)   history.csv   images/epoch_NNN.png
             doctor/<host>.txt (nfp doctor)
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

from nfp import storage
from nfp.errors import TrainingError, first_line

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

    @property
    def doctor(self) -> str:
        """`nfp doctor`'s reports, <host>.txt each."""
        return self._join("doctor")

    def file(self, name: str) -> str:
        """Any other file directly under the output dir (config.yaml, history.png, …)."""
        return self._join(name)

    def resume_epoch(self) -> int:
        """Epochs completed according to the BackupAndRestore metadata (0 without a backup)."""
        path = storage.join(self.backup, BACKUP_METADATA)
        if not storage.exists(path):
            return 0
        try:
            epoch = json.loads(storage.read_bytes(path))["epoch"]
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
                raise ValueError(f"epoch {epoch!r}")
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise TrainingError(
                f"backup metadata {path}: unreadable ({first_line(err, 120)}), expected "
                f'{{"epoch": N, ...}} as Keras writes it; delete {self.backup} to start over, or use another '
                "train.output_dir"
            ) from None
        return epoch


LOCK = ".nfp-train.lock"


@dataclass(frozen=True)
class Use:
    """Whose hold it is, for the lock's name and the messages: `nfp train` on train.output_dir by default."""

    key: str = "train.output_dir"  # the config key of the dir
    job: str = "nfp train"
    lock: str = LOCK
    lease_key: str = "train.output_dir_lease_s"


TRAIN = Use()


class InUse(TrainingError):
    """Another live job holds the dir; `holder` says which (host, pid, since)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class Hold:
    """A job's hold on its output dir. `lost` is set when another job took the dir over (a gs:// hold that could not
    be renewed in time); `reason` then says so in one line."""

    def __init__(self) -> None:
        self.lost = threading.Event()
        self.reason = ""

    def lose(self, reason: str) -> None:
        self.reason = reason
        self.lost.set()


@contextlib.contextmanager
def held(run_dir: RunDir, lease_s: float = 120.0, use: Use = TRAIN):
    """Hold the output dir for this job: a second `nfp train` on it stops with one line naming the holder
    (`InUse`; `use` names another kind of job and dir, e.g. `nfp prepare` on data.dir).

    Local disk: an flock, which the kernel drops when the holder exits or is killed. gs://: a lease object created
    only if absent and renewed while the job runs (see `_leased`); a killed job's hold ends `lease_s` after its last
    renewal. Other remote schemes (TF-only ram://) are not held."""
    if storage.is_local(run_dir.root):
        with _flocked(run_dir, use) as hold:
            yield hold
    elif storage.has_generations(run_dir.root):
        with _leased(run_dir, lease_s, use) as hold:
            yield hold
    else:
        yield Hold()


def _holder() -> str:
    since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"host {socket.gethostname()}, pid {os.getpid()}, since {since}"


def _in_use(run_dir: RunDir, holder: str, note: str = "", use: Use = TRAIN) -> InUse:
    return InUse(
        f"{use.key} {run_dir.root}: in use by another {use.job} ({holder}); wait for it to end, "
        f"or use another {use.key}{note}",
        holder,
    )


@contextlib.contextmanager
def _flocked(run_dir: RunDir, use: Use = TRAIN):
    import fcntl

    path = storage.local_path(run_dir.root) / use.lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise _in_use(run_dir, holder, use=use) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder().encode(), 0)
        yield Hold()
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def _leased(run_dir: RunDir, lease_s: float, use: Use = TRAIN):
    """Hold a gs:// output dir with <output_dir>/.nfp-train.lock, made atomic by GCS generation preconditions:

    - take: create the object only if there is none. One renewed lately means a live holder: refuse. One whose
      renewals stopped (killed, or its VM gone): wait for its lease to end, delete that version only (generation
      and metageneration), create again. Two jobs racing for the dir cannot both win: one create succeeds, the
      other gets GCS's 412.
    - renew: every lease_s/4, move the expiry on, only while the object is still this job's generation; a 412 or
      404 means another job took the dir over (this one was cut off for longer than lease_s): `Hold.lost`.
    - release: delete this job's generation.
    Expiry times are wall-clock seconds of the holder's host, compared with the reader's: hosts keep NTP time.
    """
    lock = run_dir.file(use.lock)
    holder = _holder()
    generation = _take_lease(run_dir, lock, holder, lease_s, use)
    hold, stop = Hold(), threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 4):
            try:
                storage.update_metadata_if(lock, generation, _lease_metadata(holder, lease_s))
            except (FileExistsError, FileNotFoundError):
                hold.lose(
                    f"{use.key} {run_dir.root}: taken over by another {use.job} after this job could not renew "
                    f"its hold for {lease_s:g} s ({use.lease_key}): stopped, so the two do not mix outputs"
                )
                return
            except Exception as err:  # noqa: BLE001 — a network blip: try again at the next tick, 3/4 of the lease left
                print(f"{_prefix(use)}: could not renew the hold on {run_dir.root} ({err}); retrying", file=sys.stderr)

    renewer = threading.Thread(target=renew, name="nfp-output-dir-lease", daemon=True)
    renewer.start()
    try:
        yield hold
    finally:
        stop.set()
        renewer.join()
        if not hold.lost.is_set():
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                storage.remove_if(lock, generation)


def _lease_metadata(holder: str, lease_s: float) -> dict[str, str]:
    return {"holder": holder, "expires": f"{time.time() + lease_s:.3f}", "lease_s": f"{lease_s:g}"}


def _prefix(use: Use) -> str:
    return use.job.removeprefix("nfp ")


def _take_lease(run_dir: RunDir, lock: str, holder: str, lease_s: float, use: Use = TRAIN) -> str:
    """Create the lock object, or wait out and take over a hold whose holder stopped renewing it."""
    for _ in range(4):  # create; or wait for a silent holder's lease to end, delete that hold, create again
        try:
            return storage.create_object(lock, f"{holder}\n".encode(), _lease_metadata(holder, lease_s))
        except FileExistsError:
            pass
        found = storage.object_version(lock)
        if found is None:  # released meanwhile
            continue
        other = found.metadata.get("holder", "another process")
        their_lease = float(found.metadata.get("lease_s", lease_s))
        left = float(found.metadata.get("expires", "0")) - time.time()
        if left > 0.6 * their_lease:  # renewed within the last 0.4 lease, renewing every 0.25: alive
            raise _in_use(run_dir, other, f" (its hold was renewed {their_lease - left:.0f} s ago)", use)
        if left > 0:  # a renewal missed: killed, or cut off for now; its lease decides
            print(
                f"{_prefix(use)}: {run_dir.root} is held by {other}, not renewed for {their_lease - left:.0f} s (killed?); "
                f"waiting {left:.0f} s for its hold to end",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(left + 0.5)
            continue
        print(
            f"{_prefix(use)}: {run_dir.root}: the hold of {other} ended {-left:.0f} s ago; taking it over",
            file=sys.stderr,
        )
        with contextlib.suppress(FileExistsError, FileNotFoundError):
            # only that version: a holder that renewed meanwhile (a new metageneration) or a job that took the dir
            # over (a new generation) keeps it
            storage.remove_if(lock, found.generation, found.metageneration)
    found = storage.object_version(lock)
    raise _in_use(run_dir, found.metadata.get("holder", "another process") if found else "another process", use=use)


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
