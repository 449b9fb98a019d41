"""The run directory: where each output goes, and reading back what an earlier attempt left there."""

from nfp.rundir import BACKUP_METADATA, RunDir, read_csv_history, trim_csv


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
