"""The run directory: where each output goes, reading back what an earlier attempt left there, and holding it."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import BUCKET

from nfp import storage
from nfp.errors import TrainingError
from nfp.rundir import BACKUP_METADATA, LOCK, RunDir, held, read_csv_history, trim_csv


def test_paths_under_a_local_and_a_remote_output_dir(tmp_path):
    local = RunDir(str(tmp_path / "out"))
    assert local.best == str(tmp_path / "out/checkpoints/best.keras") and local.csv == str(tmp_path / "out/history.csv")
    remote = RunDir("gs://bucket/runs/a/")
    assert remote.last == "gs://bucket/runs/a/checkpoints/last.keras" and remote.backup == "gs://bucket/runs/a/backup"


def test_resume_epoch_comes_from_the_backup_metadata(tmp_path):
    run_dir = RunDir(str(tmp_path))
    assert run_dir.resume_epoch() == 0
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / BACKUP_METADATA).write_text('{"epoch": 2, "batch": 0}')
    assert run_dir.resume_epoch() == 2


def test_csv_trim_drops_epochs_past_the_backup_and_a_torn_line(tmp_path):
    csv = tmp_path / "history.csv"
    csv.write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n4,0.")  # epoch 3 done after the backup, epoch 4 torn
    trim_csv(str(csv), 2)
    assert csv.read_text() == "epoch,loss\n1,0.5\n2,0.4\n"
    assert read_csv_history(str(csv)) == {"loss": [0.5, 0.4]}


# --------------------------------------------------------------------------- holding a gs:// output dir
def test_the_test_emulator_keeps_gcs_generation_preconditions(emulator):
    """The hold rests on GCS's 412s; tests/gcs_emulator.py adds them to the emulator, and this keeps it honest."""
    url = f"gs://{BUCKET}/preconditions/object"
    generation = storage.create_object(url, b"one", {"k": "1"})
    with pytest.raises(FileExistsError):
        storage.create_object(url, b"two", {})
    with pytest.raises(FileExistsError):
        storage.update_metadata_if(url, "1", {"k": "2"})
    with pytest.raises(FileExistsError):
        storage.remove_if(url, "1")
    first = storage.object_version(url)
    storage.update_metadata_if(url, generation, {"k": "2"})
    now = storage.object_version(url)
    assert (now.generation, now.metadata) == (generation, {"k": "2"}) and now.metageneration != first.metageneration
    with pytest.raises(FileExistsError):
        storage.remove_if(url, generation, first.metageneration)  # its metadata changed since
    storage.remove_if(url, generation, now.metageneration)
    assert storage.object_version(url) is None
    with pytest.raises(FileNotFoundError):
        storage.remove_if(url, generation)


def _in_use(root: str, pid: int) -> str:
    return (
        rf"^train.output_dir {root}: in use by another nfp train \(host [^,]+, pid {pid}, since [^)]+\); "
        r"wait for it to end, or use another train.output_dir \(its hold was renewed \d+ s ago\)$"
    )


def test_a_gs_output_dir_is_held_against_a_second_job_and_released_at_the_end(emulator):
    run_dir = RunDir(f"gs://{BUCKET}/hold/one")
    lock = run_dir.file(LOCK)
    with held(run_dir, 60) as hold:
        with pytest.raises(TrainingError, match=_in_use(run_dir.root, os.getpid())), held(run_dir, 60):
            pass
        assert not hold.lost.is_set() and storage.object_version(lock) is not None  # the refused job took nothing
    assert storage.object_version(lock) is None
    with held(run_dir, 60):  # free again
        pass


def test_jobs_racing_for_a_fresh_gs_output_dir_get_it_one_at_a_time(emulator):
    run_dir = RunDir(f"gs://{BUCKET}/hold/race")
    start, inside, overlaps, outcomes = threading.Barrier(6), threading.Lock(), [], []

    def contender():
        start.wait()
        try:
            with held(run_dir, 60):
                if not inside.acquire(blocking=False):
                    overlaps.append(1)
                    return
                outcomes.append("held")
                time.sleep(1.0)
                inside.release()
        except TrainingError:
            outcomes.append("refused")

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps and sorted(outcomes) == ["held"] + ["refused"] * 5


def test_a_running_job_renews_its_hold_past_the_lease(emulator):
    run_dir = RunDir(f"gs://{BUCKET}/hold/renewed")
    with held(run_dir, 2.0) as hold:
        time.sleep(5.0)  # 2.5 leases: held only because it was renewed
        with pytest.raises(TrainingError, match=_in_use(run_dir.root, os.getpid())), held(run_dir, 2.0):
            pass
        assert not hold.lost.is_set()


def test_a_killed_jobs_gs_hold_is_waited_out_and_taken_over(emulator, capsys):
    run_dir = RunDir(f"gs://{BUCKET}/hold/killed")
    lock = run_dir.file(LOCK)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nfp.rundir import RunDir, held\n"
         f"with held(RunDir({run_dir.root!r}), 4.0):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match=_in_use(run_dir.root, holder.pid)), held(run_dir, 4.0):
            pass  # renewing: alive
    finally:
        holder.kill()  # SIGKILL: no release runs, the lock object stays behind
        holder.wait()
    theirs = storage.object_version(lock)
    assert f"pid {holder.pid}," in theirs.metadata["holder"]
    time.sleep(2.0)  # two renewals missed
    started = time.monotonic()
    with held(run_dir, 4.0) as hold:
        waited = time.monotonic() - started
        assert storage.object_version(lock).generation != theirs.generation and not hold.lost.is_set()
    err = capsys.readouterr().err
    assert f"is held by host {socket.gethostname()}, pid {holder.pid}, " in err and "(killed?); waiting " in err
    assert "; taking it over" in err and 0.5 < waited < 5  # it waited for the lease to end, not longer


def test_a_hold_taken_over_while_the_job_runs_is_lost_and_the_new_holders_lock_survives(emulator):
    run_dir = RunDir(f"gs://{BUCKET}/hold/lost")
    lock = run_dir.file(LOCK)
    with held(run_dir, 1.0) as hold:
        storage.remove_if(lock, storage.object_version(lock).generation)  # as a job does when this one went silent
        theirs = storage.create_object(lock, b"other", {"holder": "host other, pid 1, since then", "expires": "9e9"})
        assert hold.lost.wait(timeout=5)
        assert hold.reason == (
            f"train.output_dir {run_dir.root}: taken over by another nfp train after this job could not renew its "
            "hold for 1 s (train.output_dir_lease_s): stopped, so the two do not mix outputs"
        )
    assert storage.object_version(lock).generation == theirs  # the loser does not delete the winner's lock


def test_a_takeover_spares_a_hold_renewed_after_it_looked(emulator, monkeypatch):
    """The holder renews between the newcomer's look (expired) and its delete: the delete must miss."""
    run_dir = RunDir(f"gs://{BUCKET}/hold/late")
    lock = run_dir.file(LOCK)
    holder = "host slow, pid 1, since then"
    generation = storage.create_object(
        lock, b"", {"holder": holder, "expires": f"{time.time() - 1:.3f}", "lease_s": "4"}
    )
    expired = storage.object_version(lock)
    storage.update_metadata_if(
        lock, generation, {"holder": holder, "expires": f"{time.time() + 60:.3f}", "lease_s": "60"}
    )
    looks = iter([expired])
    real = storage.object_version
    monkeypatch.setattr(storage, "object_version", lambda url: next(looks, None) or real(url))
    with pytest.raises(TrainingError, match=r"in use by another nfp train \(host slow, pid 1, since then\)"):
        with held(run_dir, 4.0):
            pass
    assert storage.object_version(lock).generation == generation  # still the slow holder's
