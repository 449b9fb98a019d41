"""train(): every enabled callback reaches fit, a run holds what training logs, resume after SIGKILL, SIGTERM stops cleanly."""

import csv
import json
import os
import shutil
import signal
import warnings

import keras
import mlflow
import pytest
from conftest import BUCKET, Trainer

from nfp.config import load_config
from nfp.errors import ConfigError, DataError, TrainingError
from nfp.rundir import RunDir, held
from nfp.training import callbacks as cb
from nfp.training.train import train

ALL_ON = [
    "train.schedule.name=cosine",
    "train.schedule.warmup_epochs=1",
    "train.early_stopping.enabled=true",
    "train.early_stopping.patience=5",
    "train.images.every_n_epochs=1",
    "evaluate.every_n_epochs=1",
    "tracking.log_model=false",
]


def _run(client=None):
    client = client or mlflow.MlflowClient()
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_train_attaches_every_enabled_callback_and_logs_the_run(tiny_overrides, tmp_path, monkeypatch):
    seen, compiled = [], []
    real_fit = keras.Model.fit

    def spy_fit(self, *args, **kwargs):
        seen.extend(kwargs["callbacks"])
        compiled.append(
            (self.jit_compile, self.steps_per_execution, type(self.optimizer).__name__, type(self.loss).__name__)
        )
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(
            load_config(
                None,
                [
                    *tiny_overrides,
                    *ALL_ON,
                    "train.steps_per_execution=2",
                    "train.optimizer=adamw",
                    "tracking.log_model=true",
                ],
            )
        )
    noise = [str(w.message) for w in caught if "ran out of data" in str(w.message) or "shuffle=True" in str(w.message)]
    assert not noise  # validation's length is known up front; the pipeline shuffles, not Keras
    assert compiled[0] == (False, 2, "AdamW", "BinaryCrossentropy")  # jit_compile auto: off without a GPU

    kinds = {type(c).__name__ for c in seen}
    assert {
        "StopAfterSigterm",
        "StopWhenTakenOver",
        "EpochStats",
        "TerminateOnNaN",
        "AtomicCheckpoint",
        "PredictionImages",
        "CSVLog",
        "EarlyStopping",
        "PeriodicEvaluation",
        "EpochMetricsToMlflow",
        "Backup",
    } <= kinds
    assert sum(isinstance(c, cb.AtomicCheckpoint) for c in seen) == 2
    assert len(summary["history"]["loss"]) == 2
    assert summary["best_checkpoint"].endswith("best.keras") and os.path.isfile(summary["last_checkpoint"])

    run = _run()
    assert run.info.run_id == summary["run_id"] and run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    for key in (
        "loss",
        "val_loss",
        "learning_rate",
        "epoch_time",
        "clips_per_sec",
        "val_mse",
        "val_ssim",
        "val_baseline_copy_last_mse",
    ):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    assert {"model.preset", "train.epochs"} <= set(run.data.params)
    assert {"replicas", "global_batch_size", "data_manifest_id", "tensorflow_version"} <= set(run.data.tags)
    assert (
        run.data.tags["global_batch_size"] == "4"
        and run.data.tags["strategy"] == "DefaultStrategy"
        and run.data.tags["device"] == "CPU"
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "data", "logs", "plots", "predictions", "checkpoints", "images"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "logs")] == ["logs/history.csv"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "config")] == ["config/resolved.yaml"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/best.keras",
        "checkpoints/last.keras",
    }
    assert [a.path for a in client.list_artifacts(run.info.run_id, "predictions")] == ["predictions/clip.gif"]
    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    assert len(logged) == 1

    # Re-running a finished job trains nothing and leaves the CSV as it was.
    before = (tmp_path / "out/history.csv").read_text()
    again = train(load_config(None, [*tiny_overrides, *ALL_ON]))
    assert again["history"] == {} and (tmp_path / "out/history.csv").read_text() == before


def test_train_reads_the_manifest_once_and_hands_it_on(tiny_overrides, tmp_path, monkeypatch):
    from nfp import storage

    reads, real_read = [], storage.read_bytes

    def counting_read(url):
        reads.append(url)
        return real_read(url)

    monkeypatch.setattr(storage, "read_bytes", counting_read)
    overrides = [
        *tiny_overrides,
        *ALL_ON,
        "tracking.log_model=true",
    ]  # every reader: images, periodic evaluation, GIF, model
    for attempt in ("fresh-data-dir", "prepared-data-dir"):
        reads.clear()
        train(load_config(None, [*overrides, f"train.output_dir={tmp_path}/{attempt}"]))
        assert sum(url.endswith("manifest.json") for url in reads) == 1, attempt


def test_scheduled_sampling_continues_its_schedule_when_training_resumes(tiny_overrides, tmp_path):
    from nfp.inference.model_source import load_model

    overrides = [*tiny_overrides, "train.scheduled_sampling=100", "train.steps_per_epoch=3", "tracking.enabled=false"]

    def sampling_step() -> int:
        return int(load_model(str(tmp_path / "out/checkpoints/last.keras")).get_layer("convlstm").sampling_step.numpy())

    train(load_config(None, [*overrides, "train.epochs=2"]))
    assert sampling_step() == 6
    train(load_config(None, [*overrides, "train.epochs=3"]))  # resumes from the backup after epoch 2
    assert sampling_step() == 9  # not 3: η goes on falling from where it was


def test_diverging_loss_is_a_one_line_training_error(tiny_overrides, tmp_path):
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "model.output_activation=linear",
            "train.optimizer=sgd",
            "train.loss=mse",
            "train.learning_rate=1.0e+30",
            "train.steps_per_epoch=6",
            "tracking.enabled=false",
        ],
    )
    with pytest.raises(
        TrainingError,
        match=r"^loss became NaN/Inf in epoch 1: stopped; no epoch had finished, nothing kept \(try a lower train.learning_rate\)$",
    ):
        train(cfg)
    assert not (tmp_path / "out/checkpoints/last.keras").exists()


def test_a_shard_corrupted_behind_the_check_is_named_by_training(tiny_overrides, tmp_path, corrupt_after_building):
    """As when TF reads gs:// shards directly (no up-front hash): fit trips on TF's CRC check, nfp names the shard."""
    cfg = load_config(None, [*tiny_overrides, "tracking.enabled=false"])
    corrupt_after_building(
        "make_dataset",
        lambda data_cfg, split: tmp_path / "data/train-00000-of-00002.tfrecord" if split == "train" else None,
    )
    with pytest.raises(
        DataError,
        match=r"^shard .*/data/train-00000-of-00002.tfrecord: sha256 .* from the manifest; run `nfp prepare` again$",
    ):
        train(cfg)


@pytest.mark.parametrize("reader", ["prediction images", "periodic evaluation"])
def test_a_val_shard_corrupted_behind_the_check_is_named(reader, tiny_overrides, tmp_path, corrupt_after_building):
    """read_clips (the strips' clips) and the periodic evaluation's clip batches name the shard TF trips on."""
    images, evaluation = ("1", "0") if reader == "prediction images" else ("0", "1")
    cfg = load_config(None, [*tiny_overrides, "tracking.enabled=false", f"train.images.every_n_epochs={images}",
                             f"evaluate.every_n_epochs={evaluation}"])  # fmt: skip
    corrupt_after_building("clip_batches", lambda data_cfg, split: tmp_path / "data/val-00000-of-00001.tfrecord")
    with pytest.raises(DataError, match=r"^shard .*/data/val-00000-of-00001.tfrecord: sha256 .* from the manifest"):
        train(cfg)


def test_a_csv_row_written_after_the_last_backup_is_trimmed_on_resume(tiny_overrides, tmp_path):
    """The window a kill can land in: epoch N's CSV row is written, its backup is not. The rerun redoes epoch N
    and history.csv holds it once."""
    import shutil

    overrides = [*tiny_overrides, "train.images.every_n_epochs=0", "tracking.enabled=false"]
    out = tmp_path / "out"
    train(load_config(None, [*overrides, "train.epochs=2"]))
    shutil.copytree(out / "backup", tmp_path / "backup-after-epoch-2")
    train(load_config(None, [*overrides, "train.epochs=3"]))
    shutil.rmtree(out / "backup")
    shutil.copytree(tmp_path / "backup-after-epoch-2", out / "backup")  # epoch 3's row is in the CSV, not in the backup
    assert [row["epoch"] for row in _rows(out / "history.csv")] == ["1", "2", "3"]

    summary = train(load_config(None, [*overrides, "train.epochs=3"]))
    assert len(summary["history"]["loss"]) == 1  # epoch 3 again, and only it
    assert [row["epoch"] for row in _rows(out / "history.csv")] == ["1", "2", "3"]

    # The same window in the first epoch: no backup yet, so the rerun starts fresh and epoch 1 appears once.
    shutil.rmtree(out / "backup")
    summary = train(load_config(None, [*overrides, "train.epochs=1"]))
    assert len(summary["history"]["loss"]) == 1
    assert [row["epoch"] for row in _rows(out / "history.csv")] == ["1"]


# --------------------------------------------------------------------------- killed and restarted
def _rows(path):
    if not path.exists():
        return []
    with path.open() as f:
        return [row for row in csv.DictReader(f)]


@pytest.mark.slow
def test_sigterm_stops_at_once_with_the_backup_kept(tiny_overrides, tmp_path):
    overrides = [
        *tiny_overrides,
        "train.epochs=50",
        "train.steps_per_epoch=12",
        "train.images.every_n_epochs=0",
        "tracking.log_model=false",
    ]
    proc = Trainer(overrides)
    proc.wait_for_rows(tmp_path / "out/history.csv", 2)  # the CSV row comes before the backup: epoch 1 is backed up
    proc.send_signal(signal.SIGTERM)
    returncode, err = proc.finish(timeout=60), proc.stderr
    assert returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM received, stopping; re-run the same command to resume" in err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "out/backup/training_metadata.json").read_text())["epoch"] >= 1
    assert _run().info.status == "KILLED"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped SystemExit, on purpose
def test_a_sigterm_whose_exit_python_drops_still_stops_training_at_the_next_batch(tmp_path, capsys):
    """A handler's exception raised while a __del__ runs is printed and dropped by Python: training would go on."""
    from nfp.training.callbacks import sigterm_stops as _sigterm_stops

    class SigtermInDel:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with _sigterm_stops(str(tmp_path / "backup")) as stop_after_sigterm:
        stop_after_sigterm.on_train_batch_end(0)  # nothing received yet: no stop
        obj = SigtermInDel()
        del obj  # SIGTERM lands here and its SystemExit is dropped…
        with pytest.raises(SystemExit) as stopped:
            stop_after_sigterm.on_train_batch_end(1)  # …so the callback raises it at the next batch
    assert stopped.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.count("SIGTERM received, stopping; re-run the same command to resume") == 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_inside_a_tracking_store_call_stops_at_the_next_batch_not_in_the_call(tmp_path, capsys):
    """SQLAlchemy prints the traceback of a statement a SystemExit breaks off: the call ends, the next batch stops."""
    from nfp.training.callbacks import sigterm_stops

    store_code = {"__name__": "sqlalchemy.engine.result", "signal": signal}
    exec("def fetch():\n    signal.raise_signal(signal.SIGTERM)\n    return 'rows'\n", store_code)
    with sigterm_stops(str(tmp_path / "backup")) as stop_after_sigterm:
        assert store_code["fetch"]() == "rows"  # the store's call ran to its end
        with pytest.raises(SystemExit) as stopped:
            stop_after_sigterm.on_train_batch_end(0)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.count("SIGTERM received, stopping") == 1


def test_global_batch_larger_than_the_training_split_names_the_batch_size(tiny_overrides):
    from nfp.errors import ConfigError

    cfg = load_config(
        None, [*tiny_overrides, "train.batch_size=64", "train.steps_per_epoch=3", "tracking.enabled=false"]
    )
    with pytest.raises(
        ConfigError, match=r"train.batch_size: global batch 64 \(64 × 1 replicas\) exceeds the \d+ training clips"
    ):
        train(cfg)


@pytest.mark.slow
def test_a_second_train_on_a_busy_output_dir_refuses_and_a_killed_holder_frees_it(tiny_overrides, tmp_path, capsys):
    from nfp.cli import main

    overrides = [*tiny_overrides, "train.images.every_n_epochs=0", "tracking.enabled=false"]
    out = tmp_path / "out"
    trainer = Trainer([*overrides, "train.epochs=500"])
    proc = trainer.proc
    try:
        trainer.wait_for_rows(out / "history.csv", 1)
        rows = len(_rows(out / "history.csv"))
        assert main(["train", *overrides, "train.epochs=500"]) == 2
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith(("error", "Traceback"))]
        assert line.startswith(f"error: train.output_dir {out}: in use by another nfp train (host ")
        assert f"pid {proc.pid}, since " in line and line.endswith(
            "wait for it to end, or use another train.output_dir"
        )
        assert proc.poll() is None and len(_rows(out / "history.csv")) >= rows  # the first job goes on, untouched
    finally:
        trainer.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
    done = RunDir(str(out)).resume_epoch()
    summary = train(load_config(None, [*overrides, f"train.epochs={done + 1}"]))
    assert len(summary["history"]["loss"]) == 1  # it took the dir over and resumed


def test_a_second_train_on_a_busy_gs_output_dir_refuses_before_any_data_work(
    emulator, tiny_overrides, tmp_path, capsys
):
    from nfp.cli import main

    out = RunDir(f"gs://{BUCKET}/busy")
    with held(out, 60):  # the first job (tests/test_rundir.py holds it from another process too)
        assert main(["train", *tiny_overrides, f"train.output_dir={out.root}"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith(("error", "Traceback"))]
    assert line.startswith(f"error: train.output_dir {out.root}: in use by another nfp train (host ")
    assert f"pid {os.getpid()}, since " in line and line.endswith(" s ago)")
    assert not (tmp_path / "data").exists()


def test_training_stops_at_the_next_batch_once_its_output_dir_is_taken_over():
    import numpy as np

    from nfp.rundir import Hold
    from nfp.training.callbacks import stops_when_taken_over as _stops_when_taken_over

    hold, batches = Hold(), []

    class TakenOverAfterTwoBatches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)
            if batch == 1:
                hold.lose("train.output_dir gs://b/o: taken over")

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(TrainingError, match=r"^train.output_dir gs://b/o: taken over$"):
        model.fit(
            np.zeros((40, 2)), np.zeros((40, 1)), batch_size=4, epochs=3, verbose=0,
            callbacks=[TakenOverAfterTwoBatches(), _stops_when_taken_over(hold)],
        )  # fmt: skip
    assert batches == [0, 1]


def test_tensorboard_logs_land_in_the_output_dir_and_the_run(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "train.tensorboard=true", "train.images.every_n_epochs=0",
                             "tracking.log_model=false", "tracking.log_checkpoints=false"])  # fmt: skip
    summary = train(cfg)
    events = sorted(
        p.relative_to(tmp_path / "out/tensorboard").parts[0]
        for p in (tmp_path / "out/tensorboard").rglob("events.out.tfevents.*")
    )
    assert events == ["train", "validation"]
    client = mlflow.MlflowClient()
    logged = [a.path for a in client.list_artifacts(summary["run_id"], "tensorboard")]
    assert sorted(logged) == ["tensorboard/train", "tensorboard/validation"]


def test_tensorboard_without_its_package_is_one_line_before_any_work(tiny_overrides, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(
        ConfigError, match=r"^train.tensorboard: needs the tensorboard package; install it with pip install"
    ):
        train(load_config(None, [*tiny_overrides, "train.tensorboard=true"]))
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- one step of the job at a time
def test_the_steps_before_fit_build_the_data_model_and_schedule_the_job_plans(tiny_overrides, tmp_path):
    import keras

    from nfp.training.train import Training

    cfg = load_config(
        None,
        [*tiny_overrides, "train.schedule.name=cosine", "train.schedule.warmup_epochs=1", "tracking.enabled=false"],
    )
    job = Training(cfg)
    job.check()
    assert not (tmp_path / "out").exists()  # the checks make nothing
    strategy = job.make_strategy()
    data = job.make_data(strategy)
    assert (data.job.global_batch, data.job.steps_per_epoch) == (4, 5)  # 20 training clips of 24, batches of 4
    model, choices = job.make_model(strategy, data)
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert (schedule.warmup_steps, schedule.decay_steps) == (5, 5)  # 1 epoch of warm-up, 1 of decay, in steps
    assert not choices.jit_compile and job.resume_point() == 0


def test_what_fit_dies_of_is_one_line_naming_the_epoch_and_what_is_kept(tiny_overrides, tmp_path):
    from nfp.training.train import Training

    cfg = load_config(None, [*tiny_overrides, "tracking.enabled=false"])
    training, stats = Training(cfg), cb.EpochStats(8)
    stats.epoch = 2  # the third epoch was running
    job = type("Job", (), {"cluster": training.cluster})()
    (tmp_path / "out/backup").mkdir(parents=True)
    with pytest.raises(
        TrainingError, match=r"^loss became NaN/Inf in epoch 3: stopped; last good state kept in .*/backup"
    ):
        with training.failures_as_errors(job, [stats]):
            raise RuntimeError("Reached NaN or Inf loss at batch 1")
    with pytest.raises(TrainingError, match=r"^writing under .*/out failed in epoch 3 \(No space left on device\)"):
        with training.failures_as_errors(job, [stats]):
            raise OSError(28, "No space left on device")
    with pytest.raises(RuntimeError, match="^something else$"):  # not ours to translate
        with training.failures_as_errors(job, [stats]):
            raise RuntimeError("something else")


# --------------------------------------------------------------------------- resuming into a backup that does not fit
def _trained_one_epoch(tiny_overrides, *extra):
    base = [*tiny_overrides, "train.epochs=1", "tracking.enabled=false", *extra]
    train(load_config(None, base))
    return [*tiny_overrides, "train.epochs=2", "tracking.enabled=false", *extra]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error")]
    return line


@pytest.mark.parametrize(
    "change, named",
    [
        ("model.filters=[8]", "model.filters: [4] → [8]"),
        ("model.kernel_sizes=[5]", "model.kernel_sizes: [3] → [5]"),
        ("model.patch_size=2", "model.patch_size: 1 → 2"),
        ("model.preset=keras_io", "model.cell: nfp → keras"),
        ("train.optimizer=sgd", "train.optimizer: adam → sgd"),
    ],
)
def test_resuming_with_a_model_or_optimizer_the_backup_cannot_fit_is_one_line_before_any_work(
    change, named, tiny_overrides, tmp_path, capsys
):
    from nfp.cli import main

    again = _trained_one_epoch(tiny_overrides)
    capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert main(["train", *again, change]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: train.output_dir {tmp_path}/out: its backup was trained with another model")
    assert named in line and f"rerun with the config it was trained with ({tmp_path}/out/config.yaml)" in line
    assert "another train.output_dir" in line
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before  # nothing touched


@pytest.mark.parametrize(
    "change, named", [("data.seed=7", "data.seed: 0 → 7"), ("data.num_clips=28", "data.num_clips: 24 → 28")]
)
def test_resuming_on_another_data_set_is_one_line_naming_what_differs_before_any_work(
    change, named, tiny_overrides, tmp_path, capsys
):
    """One run, one data set: a rerun into the output dir on other data would log a second dataset input and
    overwrite the manifest tag; it is refused before any work, as a changed model is."""
    import json

    from nfp.cli import main

    again = _trained_one_epoch(tiny_overrides)
    old_id = json.loads((tmp_path / "out" / "manifest.json").read_text())["id"]
    capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert main(["train", *again, change, f"data.dir={tmp_path}/other"]) == 2
    line = _error_line(capsys)
    assert line == (
        f"error: train.output_dir {tmp_path}/out: its backup was trained on another data set (data {old_id}; "
        f"{named}) and cannot be resumed on it: rerun with the data it was trained on (its config: "
        f"{tmp_path}/out/config.yaml), or use another train.output_dir to start over"
    )
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before  # nothing touched
    assert not (tmp_path / "other").exists()  # nor prepared
    summary = train(load_config(None, [*again, f"data.dir={tmp_path}/copy"]))  # the same data elsewhere: resumes
    assert len(summary["history"]["loss"]) == 1


def test_resuming_with_changes_that_load_goes_on(tiny_overrides, tmp_path):
    again = _trained_one_epoch(tiny_overrides)
    summary = train(load_config(None, [*again, "train.learning_rate=0.0005", "train.optimizer=adamw"]))
    assert len(summary["history"]["loss"]) == 1  # epoch 2 only: resumed


def test_a_backup_that_cannot_be_restored_is_one_line_not_a_failed_write(tiny_overrides, tmp_path, capsys):
    """Damaged (truncated) or from another model with no config.yaml left to judge by: restoring says so."""
    from nfp.cli import main

    again = _trained_one_epoch(tiny_overrides)
    weights = tmp_path / "out/backup/latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", *again]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: backup {tmp_path}/out/backup: cannot be restored into this model (")
    assert "damaged or was trained with another model" in line and "writing under" not in line

    shutil.rmtree(tmp_path / "out")
    again = _trained_one_epoch(tiny_overrides)
    (tmp_path / "out/config.yaml").unlink()
    capsys.readouterr()
    assert main(["train", *again, "model.filters=[8]"]) == 2
    assert _error_line(capsys).startswith(f"error: backup {tmp_path}/out/backup: cannot be restored into this model")


@pytest.mark.parametrize("metadata", ["", "{not json", '{"batch": 0}', '{"epoch": "one"}', '{"epoch": -1}', "[]"])
def test_a_malformed_backup_metadata_file_is_one_line_naming_it(metadata, tiny_overrides, tmp_path, capsys):
    from nfp.cli import main

    again = _trained_one_epoch(tiny_overrides)
    (tmp_path / "out/backup/training_metadata.json").write_text(metadata)
    capsys.readouterr()
    assert main(["train", *again]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: backup metadata {tmp_path}/out/backup/training_metadata.json: unreadable (")
    assert f"delete {tmp_path}/out/backup to start over" in line


# --------------------------------------------------------------------------- sizes that cannot fit
@pytest.mark.slow  # TensorFlow's allocator retries the failed allocation for 10 s before the error
def test_a_model_too_large_for_memory_is_one_line_naming_the_keys_to_lower(tiny_overrides, tmp_path, capsys):
    from nfp.cli import main

    # 3×3×100,000×400,000 float32 hidden-to-hidden kernel: 1.4 TB, refused by the allocator at once
    assert main(["train", *tiny_overrides, "model.filters=[100000]", "tracking.enabled=false"]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: out of memory while building the model (OOM when allocating tensor with shape[")
    assert "lower train.batch_size (4 per replica), model.filters ([100000]) or data.image_size (16)" in line


def test_out_of_memory_in_fit_is_one_line_naming_the_epoch_the_keys_and_what_is_kept(tiny_overrides, tmp_path):
    import tensorflow as tf

    from nfp.training.train import Training

    training, stats = Training(load_config(None, [*tiny_overrides, "tracking.enabled=false"])), cb.EpochStats(8)
    stats.epoch = 0
    job = type("Job", (), {"cluster": training.cluster})()
    for oom in (tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[4,5,16,16,64]"),
                MemoryError("Unable to allocate 12.0 GiB")):  # fmt: skip
        with pytest.raises(TrainingError) as caught:
            with training.failures_as_errors(job, [stats]):
                raise oom
        assert str(caught.value).startswith("out of memory in epoch 1 (")
        assert str(caught.value).endswith(
            "): lower train.batch_size (4 per replica), model.filters ([4]) or data.image_size (16); "
            "no epoch had finished, nothing kept"
        )


def test_the_console_line_shows_the_unchanging_baselines_once_and_the_csv_keeps_them(tiny_overrides, tmp_path, capsys):
    overrides = [*tiny_overrides, "train.epochs=3", "train.verbose=2", "evaluate.every_n_epochs=1",
                 "train.images.every_n_epochs=0", "tracking.enabled=false"]  # fmt: skip
    train(load_config(None, overrides))
    lines = [x for x in capsys.readouterr().out.splitlines() if "loss:" in x]
    assert len(lines) == 3
    assert "val_baseline_copy_last_mse" in lines[0]
    assert not any("val_baseline" in x for x in lines[1:]) and all("val_mse" in x for x in lines)
    rows = _rows(tmp_path / "out" / "history.csv")
    assert [bool(r["val_baseline_copy_last_mse"]) for r in rows] == [True, True, True]  # kept every epoch
