"""Callbacks from config: what each switch attaches, in what order, and what each one writes."""

import json

import keras
import numpy as np
import pytest

from nfp.config import load_config
from nfp.distribute import ClusterInfo
from nfp.models.convlstm.model import build_model
from nfp.models.optim import WarmupThenPlateau, build_optimizer
from nfp.rundir import RunDir, read_csv_history, trim_csv
from nfp.training import callbacks as cb
from nfp.training.job import Job

EVERYTHING_ON = [
    "train.schedule.name=plateau",
    "train.schedule.warmup_epochs=1",
    "train.checkpoint.save_best=true",
    "train.checkpoint.save_last=true",
    "train.backup=true",
    "train.early_stopping.enabled=true",
    "train.terminate_on_nan=true",
    "train.csv_log=true",
    "train.images.every_n_epochs=1",
    "evaluate.every_n_epochs=1",
    "evaluate.context_frames=2",
    "evaluate.predict_frames=3",
]
EVERYTHING_OFF = [
    "train.checkpoint.save_best=false",
    "train.checkpoint.save_last=false",
    "train.backup=false",
    "train.early_stopping.enabled=false",
    "train.terminate_on_nan=false",
    "train.csv_log=false",
    "train.images.every_n_epochs=0",
]


class Tracker(keras.callbacks.Callback):
    """Stands in for RunLogger.keras_callback(): records the logs it is handed."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))


def _job(cfg, *, output_dir: str | None = None, is_chief: bool = True) -> Job:
    """A one-replica job of 2 steps × 4 clips per epoch writing to `output_dir` (default: train.output_dir)."""
    cluster = ClusterInfo(is_chief=is_chief, task_index=0 if is_chief else 1, num_workers=1 if is_chief else 2)
    return Job(
        cluster, replicas=1, global_batch=4, steps_per_epoch=2, output=RunDir(output_dir or cfg.train.output_dir)
    )


class Run:
    """Stands in for the tracking logger: keeps the images it is handed, its epoch callback is a Tracker."""

    active = True

    def __init__(self, tracker=None):
        self.tracker, self.images = tracker, []

    def log_image(self, image, key, step):
        self.images.append((image.shape, image.dtype, key, step))

    def keras_callback(self):
        return self.tracker


def _inputs(**kwargs) -> cb.Inputs:
    val_clips = np.random.default_rng(1).integers(0, 256, (2, 6, 16, 16, 1), dtype=np.uint8)
    batches = lambda: __import__("tensorflow").data.Dataset.from_tensor_slices(val_clips).batch(2)
    return cb.Inputs(**{"run": Run(Tracker()), "strip_clips": val_clips, "eval_batches": batches, **kwargs})


def _build(tiny_overrides, extra, *, output_dir=None, is_chief=True, **kwargs):
    cfg = load_config(None, [*tiny_overrides, *extra])
    inputs = _inputs(**kwargs)
    return cfg, cb.build_callbacks(cfg, _job(cfg, output_dir=output_dir, is_chief=is_chief), inputs)


def _fit(cfg, callbacks, epochs=2):
    x = np.random.default_rng(0).random((8, 6, 16, 16, 1), dtype=np.float32)
    ds = __import__("tensorflow").data.Dataset.from_tensor_slices((x[:, :-1], x[:, 1:])).batch(4)
    model = build_model(cfg.model, image_size=16)
    model.compile(build_optimizer(cfg.train, 1, steps_per_epoch=2), "bce")
    model.optimizer.build(model.trainable_variables)  # as nfp train does: the step traced once, not twice
    return model, model.fit(ds, validation_data=ds, epochs=epochs, callbacks=callbacks, verbose=0)


class Inactive:
    """Stands in for the tracking logger off the chief or with tracking off."""

    active = False


class Stop(keras.callbacks.Callback):
    """Stands in for the job-control stops (SIGTERM, takeover) train.py hands on."""


def test_every_enabled_callback_is_built_in_groups_in_order(tiny_overrides):
    stop = Stop()
    _, callbacks = _build(tiny_overrides, EVERYTHING_ON, stops=(stop,))
    kinds = [type(c) for c in callbacks]
    expected = [
        cb.PeriodicEvaluation,  # evaluation: adds val_mse, … that later ones watch
        WarmupThenPlateau,  # the learning rate: plateau watches them
        keras.callbacks.TerminateOnNaN,  # stopping
        keras.callbacks.EarlyStopping,
        cb.AtomicCheckpoint,  # checkpoints
        cb.AtomicCheckpoint,
        cb.EpochStats,  # logs and pictures: record all of the above
        cb.PredictionImages,
        cb.CSVLog,
        Tracker,
        cb.Backup,  # the backup last of the epoch's work
        Stop,  # then job control
    ]
    assert kinds == expected and callbacks[-1] is stop
    best, last = [c for c in callbacks if isinstance(c, cb.AtomicCheckpoint)]
    assert best.save_best_only and best.final_path.endswith("checkpoints/best.keras")
    assert not last.save_best_only and last.final_path.endswith("checkpoints/last.keras")


def test_switched_off_callbacks_are_absent(tiny_overrides):
    _, callbacks = _build(tiny_overrides, EVERYTHING_OFF)
    assert [type(c) for c in callbacks] == [cb.EpochStats, Tracker]
    _, callbacks = _build(tiny_overrides, EVERYTHING_OFF, run=Inactive())
    assert [type(c) for c in callbacks] == [cb.EpochStats]


def test_fit_with_everything_on_writes_and_logs_each_epoch(tiny_overrides, tmp_path):
    run = Run(Tracker())
    cfg, callbacks = _build(tiny_overrides, EVERYTHING_ON, run=run)
    tracker, images = run.tracker, run.images
    _, history = _fit(cfg, callbacks)
    out = tmp_path / "out"
    assert (out / "checkpoints/best.keras").is_file() and (out / "checkpoints/last.keras").is_file()
    assert not list((out / "checkpoints").glob("*.tmp.keras"))
    assert json.loads((out / "backup/training_metadata.json").read_text())["epoch"] == 2
    assert [p.name for p in sorted((out / "images").iterdir())] == ["epoch_000.png", "epoch_001.png", "epoch_002.png"]
    assert [(key, step) for *_, key, step in images] == [
        (f"predictions/clip_{clip}", step) for step in (0, 1, 2) for clip in (0, 1)
    ]  # one image per clip (tiny_overrides: 2), so MLflow's thumbnail of each is large
    assert images[0][1] == np.uint8 and images[0][0][2] == 3
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].split(",")[0] == "epoch" and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    # the tracking callback sees what the earlier callbacks added
    for logs in tracker.logs:
        assert {"loss", "val_loss", "learning_rate", "epoch_time", "clips_per_sec", "val_mse", "val_ssim"} <= set(logs)
        assert logs["val_baseline_copy_last_mse"] > 0
        assert logs["clips_per_sec"] > 0 and logs["epoch_time"] > 0
    assert set(history.history) >= {"learning_rate", "epoch_time", "clips_per_sec"}


def test_the_step_schedule_moves_the_optimizer_learning_rate_with_no_callback(tiny_overrides):
    cfg, callbacks = _build(
        tiny_overrides,
        [
            *EVERYTHING_OFF,
            "train.learning_rate=0.01",
            "train.schedule.name=step",
            "train.schedule.step_epochs=1",
            "train.schedule.gamma=0.1",
        ],
    )
    assert [type(c) for c in callbacks] == [cb.EpochStats, Tracker]
    _, history = _fit(cfg, callbacks, epochs=3)
    assert history.history["learning_rate"] == pytest.approx([0.01, 0.001, 0.0001], rel=1e-5)


def test_non_chief_saves_into_scratch_and_restores_from_the_chief(tiny_overrides, tmp_path):
    scratch = tmp_path / "scratch"
    _, callbacks = _build(tiny_overrides, EVERYTHING_ON, is_chief=False, scratch_dir=str(scratch))
    assert not any(isinstance(c, cb.PredictionImages) for c in callbacks)
    for c in callbacks:
        if isinstance(c, cb.AtomicCheckpoint):
            assert c.final_path.startswith(str(scratch))
        if isinstance(c, keras.callbacks.CSVLogger):
            assert c.filename.startswith(str(scratch))
    backup = callbacks[-1]
    assert backup.backup_dir == str(tmp_path / "out/backup") and backup.save_dir == str(scratch / "backup")


def test_resumed_best_checkpoint_is_not_replaced_by_a_worse_epoch(tiny_overrides, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "history.csv").write_text("epoch,loss,val_loss\n1,0.1,0.0001\n")
    _, callbacks = _build(tiny_overrides, ["train.checkpoint.save_best=true"])
    best = next(c for c in callbacks if isinstance(c, cb.AtomicCheckpoint) and c.save_best_only)
    assert best.best == pytest.approx(0.0001)


def test_stale_temporary_checkpoint_is_never_promoted(tiny_overrides, tmp_path):
    cfg, callbacks = _build(tiny_overrides, [*EVERYTHING_OFF, "train.checkpoint.save_best=true"])
    ckpt = tmp_path / "out/checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "best.tmp.keras").write_text("half-written by a killed run")
    (tmp_path / "out/history.csv").write_text("epoch,val_loss\n1,0.0\n")  # nothing will beat this
    callbacks = cb.build_callbacks(cfg, _job(cfg, output_dir=str(tmp_path / "out")), _inputs())
    _fit(cfg, callbacks, epochs=1)
    assert not (ckpt / "best.keras").exists() and not (ckpt / "best.tmp.keras").exists()


def test_nan_loss_raises_instead_of_checkpointing(tiny_overrides, tmp_path):
    cfg, callbacks = _build(
        tiny_overrides, [*EVERYTHING_OFF, "train.terminate_on_nan=true", "train.checkpoint.save_last=true"]
    )
    x = np.full((4, 6, 16, 16, 1), np.nan, np.float32)
    ds = __import__("tensorflow").data.Dataset.from_tensor_slices((x[:, :-1], x[:, 1:])).batch(4)
    model = build_model(cfg.model, image_size=16)
    model.compile("adam", "bce")
    model.optimizer.build(model.trainable_variables)  # as nfp train does: the step traced once, not twice
    with pytest.raises(RuntimeError, match="NaN or Inf loss"):
        model.fit(ds, epochs=1, callbacks=callbacks, verbose=0)
    assert not (tmp_path / "out/checkpoints/last.keras").exists()


def test_callbacks_write_to_a_non_local_filesystem(tiny_overrides):
    """TF's ram:// stands in for gs://: no callback may assume a local path."""
    import tensorflow as tf

    out = "ram://callbacks-test/out"
    cfg, callbacks = _build(tiny_overrides, EVERYTHING_ON, output_dir=out)
    _fit(cfg, callbacks)
    for name in (
        "history.csv",
        "checkpoints/best.keras",
        "checkpoints/last.keras",
        "backup/latest.weights.h5",
        "images/epoch_002.png",
    ):
        assert tf.io.gfile.exists(f"{out}/{name}"), name
    run_dir = RunDir(out)
    assert run_dir.resume_epoch() == 2
    trim_csv(run_dir.csv, 1)
    assert len(read_csv_history(run_dir.csv)["loss"]) == 1


def test_best_checkpoint_can_monitor_the_periodic_evaluation_metrics(tiny_overrides, tmp_path):
    cfg, callbacks = _build(
        tiny_overrides, [*EVERYTHING_ON, "train.checkpoint.monitor=val_mse", "train.schedule.name=constant"]
    )
    _fit(cfg, callbacks, epochs=1)
    assert (tmp_path / "out/checkpoints/best.keras").is_file()
