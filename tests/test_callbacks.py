"""Callbacks from config: what each switch attaches, in what order, and what each one writes."""

import json
import math

import keras
import numpy as np
import pytest

from nfp import callbacks as cb
from nfp.config import load_config
from nfp.model import build_model

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


def _build(tiny_overrides, extra, **kwargs):
    cfg = load_config(None, [*tiny_overrides, *extra])
    val_clips = np.random.default_rng(1).integers(0, 256, (2, 6, 16, 16), dtype=np.uint8)
    args = dict(output_dir=cfg.train.output_dir, is_chief=True, replicas=1, clips_per_epoch=8, val_clips=val_clips,
                val_clip_batches=lambda: __import__("tensorflow").data.Dataset.from_tensor_slices(val_clips).batch(2),
                tracking_callback=Tracker())
    return cfg, cb.build_callbacks(cfg, **{**args, **kwargs})


def _fit(cfg, callbacks, epochs=2):
    x = np.random.default_rng(0).random((8, 6, 16, 16, 1), dtype=np.float32)
    ds = __import__("tensorflow").data.Dataset.from_tensor_slices((x[:, :-1], x[:, 1:])).batch(4)
    model = build_model(cfg.model, image_size=16)
    model.compile(keras.optimizers.Adam(cb.base_learning_rate(cfg.train, 1)), "bce")
    return model, model.fit(ds, validation_data=ds, epochs=epochs, callbacks=callbacks, verbose=0)


def test_every_enabled_callback_is_built_in_order(tiny_overrides):
    _, callbacks = _build(tiny_overrides, EVERYTHING_ON)
    kinds = [type(c) for c in callbacks]
    expected = [
        keras.callbacks.LearningRateScheduler,
        cb.PeriodicEvaluation,
        keras.callbacks.ReduceLROnPlateau,
        cb.EpochStats,
        keras.callbacks.TerminateOnNaN,
        cb.AtomicCheckpoint,
        cb.AtomicCheckpoint,
        cb.PredictionImages,
        cb.CSVLog,
        keras.callbacks.EarlyStopping,
        Tracker,
        cb.Backup,
    ]
    assert kinds == expected
    best, last = [c for c in callbacks if isinstance(c, cb.AtomicCheckpoint)]
    assert best.save_best_only and best.final_path.endswith("checkpoints/best.keras")
    assert not last.save_best_only and last.final_path.endswith("checkpoints/last.keras")


def test_switched_off_callbacks_are_absent(tiny_overrides):
    _, callbacks = _build(tiny_overrides, EVERYTHING_OFF, tracking_callback=None)
    assert [type(c) for c in callbacks] == [keras.callbacks.LearningRateScheduler, cb.EpochStats]


def test_fit_with_everything_on_writes_and_logs_each_epoch(tiny_overrides, tmp_path):
    images = []
    cfg, callbacks = _build(tiny_overrides, EVERYTHING_ON, image_sink=lambda img, key, step: images.append((img.shape, img.dtype, key, step)))
    tracker = callbacks[-2]
    _, history = _fit(cfg, callbacks)
    out = tmp_path / "out"
    assert (out / "checkpoints/best.keras").is_file() and (out / "checkpoints/last.keras").is_file()
    assert not list((out / "checkpoints").glob("*.tmp.keras"))
    assert json.loads((out / "backup/training_metadata.json").read_text())["epoch"] == 2
    assert [p.name for p in sorted((out / "images").iterdir())] == ["epoch_001.png", "epoch_002.png"]
    assert [(key, step) for *_, key, step in images] == [("predictions", 1), ("predictions", 2)]
    assert images[0][1] == np.uint8 and images[0][0][2] == 3
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].split(",")[0] == "epoch" and [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    # the tracking callback sees what the earlier callbacks added
    for logs in tracker.logs:
        assert {"loss", "val_loss", "learning_rate", "epoch_time", "clips_per_sec", "val_mse", "val_ssim"} <= set(logs)
        assert logs["val_baseline_copy_last_mse"] > 0
        assert logs["clips_per_sec"] > 0 and logs["epoch_time"] > 0
    assert set(history.history) >= {"learning_rate", "epoch_time", "clips_per_sec"}


def test_learning_rate_schedules(tiny_overrides):
    def lrs(*extra, replicas=1):
        t = load_config(None, [*tiny_overrides, "train.learning_rate=0.1", "train.epochs=6", *extra]).train
        return [cb.learning_rate_at(e, t, replicas) for e in range(6)]

    assert lrs() == pytest.approx([0.1] * 6)
    assert lrs("train.schedule.name=step", "train.schedule.step_epochs=2", "train.schedule.gamma=0.5") == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    )
    cosine = lrs("train.schedule.name=cosine", "train.schedule.warmup_epochs=2")
    assert cosine[:3] == pytest.approx([0.05, 0.1, 0.1])  # linear warm-up, then the cosine from the peak
    assert cosine[3] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:]))
    assert lrs("train.scale_lr=true", replicas=4)[0] == pytest.approx(0.4)
    assert lrs("train.scale_lr=false", replicas=4)[0] == pytest.approx(0.1)


def test_scheduler_sets_the_optimizer_learning_rate_each_epoch(tiny_overrides):
    cfg, callbacks = _build(
        tiny_overrides, [*EVERYTHING_OFF, "train.learning_rate=0.01", "train.schedule.name=step", "train.schedule.step_epochs=1", "train.schedule.gamma=0.1"]
    )
    _, history = _fit(cfg, callbacks, epochs=3)
    assert history.history["learning_rate"] == pytest.approx([0.01, 0.001, 0.0001], rel=1e-5)


def test_non_chief_saves_into_scratch_and_restores_from_the_chief(tiny_overrides, tmp_path):
    scratch = tmp_path / "scratch"
    cfg, callbacks = _build(tiny_overrides, EVERYTHING_ON, is_chief=False, scratch_dir=str(scratch))
    assert not any(isinstance(c, cb.PredictionImages) for c in callbacks)
    for c in callbacks:
        if isinstance(c, cb.AtomicCheckpoint):
            assert c.final_path.startswith(str(scratch))
        if isinstance(c, keras.callbacks.CSVLogger):
            assert c.filename.startswith(str(scratch))
    backup = callbacks[-1]
    assert backup.backup_dir == str(tmp_path / "out/backup") and backup.save_dir == str(scratch / "backup")


def test_resume_epoch_and_csv_trim(tmp_path):
    backup = tmp_path / "backup"
    assert cb.resume_epoch(str(backup)) == 0
    backup.mkdir()
    (backup / cb.BACKUP_METADATA).write_text('{"epoch": 2, "batch": 0}')
    assert cb.resume_epoch(str(backup)) == 2
    csv = tmp_path / "history.csv"
    csv.write_text("epoch,loss\n0,0.5\n1,0.4\n2,0.3\n3,0.")  # epoch 2 done after the backup, epoch 3 torn
    cb.trim_csv(str(csv), 2)
    assert csv.read_text() == "epoch,loss\n0,0.5\n1,0.4\n"
    assert cb.read_csv_history(str(csv)) == {"loss": [0.5, 0.4]}


def test_resumed_best_checkpoint_is_not_replaced_by_a_worse_epoch(tiny_overrides, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "history.csv").write_text("epoch,loss,val_loss\n0,0.1,0.0001\n")
    _, callbacks = _build(tiny_overrides, ["train.checkpoint.save_best=true"])
    best = next(c for c in callbacks if isinstance(c, cb.AtomicCheckpoint) and c.save_best_only)
    assert best.best == pytest.approx(0.0001)


def test_stale_temporary_checkpoint_is_never_promoted(tiny_overrides, tmp_path):
    cfg, callbacks = _build(tiny_overrides, [*EVERYTHING_OFF, "train.checkpoint.save_best=true"])
    ckpt = tmp_path / "out/checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "best.tmp.keras").write_text("half-written by a killed run")
    (tmp_path / "out/history.csv").write_text("epoch,val_loss\n0,0.0\n")  # nothing will beat this
    callbacks = cb.build_callbacks(cfg, output_dir=str(tmp_path / "out"), is_chief=True, replicas=1, clips_per_epoch=8)
    _fit(cfg, callbacks, epochs=1)
    assert not (ckpt / "best.keras").exists() and not (ckpt / "best.tmp.keras").exists()


def test_nan_loss_raises_instead_of_checkpointing(tiny_overrides, tmp_path):
    cfg, callbacks = _build(tiny_overrides, [*EVERYTHING_OFF, "train.terminate_on_nan=true", "train.checkpoint.save_last=true"])
    x = np.full((4, 6, 16, 16, 1), np.nan, np.float32)
    ds = __import__("tensorflow").data.Dataset.from_tensor_slices((x[:, :-1], x[:, 1:])).batch(4)
    model = build_model(cfg.model, image_size=16)
    model.compile("adam", "bce")
    with pytest.raises(RuntimeError, match="NaN or Inf loss"):
        model.fit(ds, epochs=1, callbacks=callbacks, verbose=0)
    assert not (tmp_path / "out/checkpoints/last.keras").exists()


def test_callbacks_write_to_a_non_local_filesystem(tiny_overrides):
    """TF's ram:// stands in for gs://: no callback may assume a local path."""
    import tensorflow as tf

    out = "ram://callbacks-test/out"
    cfg, callbacks = _build(tiny_overrides, EVERYTHING_ON, output_dir=out)
    _fit(cfg, callbacks)
    for name in ("history.csv", "checkpoints/best.keras", "checkpoints/last.keras", "backup/latest.weights.h5", "images/epoch_002.png"):
        assert tf.io.gfile.exists(f"{out}/{name}"), name
    assert cb.resume_epoch(f"{out}/backup") == 2
    cb.trim_csv(f"{out}/history.csv", 1)
    assert len(cb.read_csv_history(f"{out}/history.csv")["loss"]) == 1


def test_best_checkpoint_can_monitor_the_periodic_evaluation_metrics(tiny_overrides, tmp_path):
    cfg, callbacks = _build(tiny_overrides, [*EVERYTHING_ON, "train.checkpoint.monitor=val_mse", "train.schedule.name=constant"])
    _fit(cfg, callbacks, epochs=1)
    assert (tmp_path / "out/checkpoints/best.keras").is_file()
