"""Training callbacks from `cfg.train`: stock Keras wherever Keras has it.

`build_callbacks` builds them in groups, in the order they must run (it says why). Only the chief writes to `output_dir`; the other
workers still run the saving callbacks (saving can need collective ops under
MultiWorkerMirroredStrategy) but into a scratch dir, and restore from the chief's backup.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np

from nfp import storage, visualize
from nfp.errors import TrainingError, first_line
from nfp.models.optim import plateau_callback
from nfp.rundir import BACKUP_METADATA, Hold, RunDir, read_csv_history
from nfp.training.job import Job

if TYPE_CHECKING:
    from nfp.tracking import RunLogger


# --------------------------------------------------------------------------- callbacks Keras lacks
class EpochStats(keras.callbacks.Callback):
    """Adds `epoch_time` (s, whole epoch), `clips_per_sec` (training part only) and `learning_rate` (at the epoch's
    first step: the LR moves every step under a schedule) to the epoch logs."""

    def __init__(self, clips_per_epoch: int):
        super().__init__()
        self.clips_per_epoch = clips_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):  # fit runs validation between the last batch and on_epoch_end
        if getattr(self, "_start", None) is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        now = time.perf_counter()
        train_time = (self._train_end or now) - self._start
        logs["epoch_time"] = now - self._start
        logs["clips_per_sec"] = self.clips_per_epoch / max(train_time, 1e-9)
        logs.setdefault("learning_rate", self._learning_rate)
        self._start = None


class PredictionImages(keras.callbacks.Callback):
    """Every `every` epochs (and at step 0 when `at_start`): context / truth / rollout-prediction strips of fixed
    clips → PNG + sink(image, key, step)."""

    def __init__(
        self,
        clips: np.ndarray,
        *,
        every: int,
        context_frames: int,
        predict_frames: int,
        images_dir: str,
        sink: Callable | None = None,
        key: str = "predictions",
        at_start: bool = False,
        jit_compile: bool = False,
    ):
        super().__init__()
        self.clips = np.asarray(clips)  # (N, T, H, W) uint8
        t = self.clips.shape[1]
        self.context = max(1, min(context_frames, t - 1))
        self.horizon = max(1, min(predict_frames, t - self.context))
        self.every, self.images_dir, self.sink, self.key, self.at_start = every, images_dir, sink, key, at_start
        self.jit_compile = jit_compile

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self.render(epoch + 1)

    def on_train_begin(self, logs=None):
        if self.at_start:  # step 0, the untrained model: the UI's image slider opens on it
            self.render(0)

    def render(self, step: int) -> np.ndarray:
        """Draw the strips for `step` (epochs from 1): every clip's labelled rows of context, truth and prediction
        (frames scaled up to be legible, long rows wrapped) in one PNG in the output dir, and one image per clip
        to the sink, as `<key>/clip_<i>`, wrapped near-square so MLflow's 256 px thumbnail shows it large."""
        from nfp.models import rollout

        frames = self.clips.astype(np.float32) / 255.0
        k, n = self.context, self.horizon
        pred = rollout(self.model, frames[:, :k], n, jit_compile=self.jit_compile)
        per_clip = [
            [(f"#{i} context", clip[:k]), ("truth", clip[k : k + n]), ("prediction", p)]
            for i, (clip, p) in enumerate(zip(frames, pred))
        ]
        frame_px = self.clips.shape[2]
        scale = visualize.frame_scale(frame_px)
        image = _rgb(
            visualize.labelled_rows([row for rows in per_clip for row in rows], scale, wrap=visualize.ROW_FRAMES)
        )
        with tempfile.TemporaryDirectory() as tmp:
            local = visualize.write_png(image, os.path.join(tmp, "x.png"), scale=1)
            storage.write_bytes(storage.join(self.images_dir, f"epoch_{step:03d}.png"), local.read_bytes())
        if self.sink is not None:
            wrap = visualize.squarest_wrap([k, n, n], frame_px, scale)
            for i, rows in enumerate(per_clip):
                self.sink(_rgb(visualize.labelled_rows(rows, scale, wrap=wrap)), f"{self.key}/clip_{i}", step)
        return image


def _rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)


class PeriodicEvaluation(keras.callbacks.Callback):
    """Every `every` epochs: the OpenSTL metrics of a rollout on validation clips, next to the baselines,
    added to the epoch logs as val_mse, val_ssim, val_baseline_copy_last_mse, … (so MLflow steps them by epoch)."""

    def __init__(self, make_clips: Callable, *, every: int, evaluate_cfg, jit_compile: bool = False):
        super().__init__()
        self.make_clips, self.every, self.cfg, self.jit_compile = make_clips, every, evaluate_cfg, jit_compile

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        from nfp.inference.scoring import evaluate_model, flat_metrics

        e = self.cfg
        result = evaluate_model(
            self.model,
            self.make_clips(),
            protocol=e.protocol,
            context_frames=e.context_frames,
            predict_frames=e.predict_frames,
            jit_compile=self.jit_compile,
        )
        logs.update(flat_metrics(result, "val"))


class ConsoleLine(keras.callbacks.ProgbarLogger):
    """Keras's progress output, with the validation baselines (val_baseline_*: the same clips every epoch, so the same
    values) on the first epoch that has them only: each later line keeps what moves. They stay in the epoch logs,
    the CSV and the run."""

    shown_baselines = False

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        baselines = [key for key in logs if key.startswith("val_baseline_")]
        if baselines and self.shown_baselines:
            logs = {key: value for key, value in logs.items() if key not in baselines}
        self.shown_baselines = self.shown_baselines or bool(baselines)
        super().on_epoch_end(epoch, logs)


class AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that saves to a temporary name and renames: a kill mid-save never leaves a partial .keras."""

    def __init__(self, filepath: str, **kwargs):
        self.final_path = filepath
        super().__init__(filepath[: -len(".keras")] + ".tmp.keras", **kwargs)

    def on_train_begin(self, logs=None):
        if storage.exists(self.filepath):  # left by a killed run: never promote it
            storage.remove(self.filepath)

    def on_epoch_end(self, epoch, logs=None):
        try:
            super().on_epoch_end(epoch, logs)
        except OSError:  # a full disk: leave the last complete checkpoint, not a partial one beside it
            if storage.exists(self.filepath):
                storage.remove(self.filepath)
            raise
        if storage.exists(self.filepath):
            storage.rename(self.filepath, self.final_path)


class CSVLog(keras.callbacks.CSVLogger):
    """CSVLogger with epochs numbered from 1 (as MLflow's steps), that also closes a remote (gs://) file: Keras's
    on_train_end asks tf.io.gfile.GFile for `.closed`, which it lacks."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        # Appending (a resumed run): keep the file's columns. Keras would take them from this run's first
        # epoch, whose keys can differ (periodic val_* metrics), and write rows longer than the header.
        if not self.append_header:
            header = storage.read_bytes(self.filename).decode().partition("\n")[0]
            self.keys = header.rstrip("\r").split(self.sep)[1:] or None

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)  # epochs numbered from 1, as MLflow steps and Keras's progress lines

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
            self.csv_file = None
        self.writer = None


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that writes atomically, keeps the backup after training, and saves to `save_dir`
    (a scratch dir off the chief) while restoring from `backup_dir` (the chief's). Keras's restore is kept;
    its save, which writes in place, is replaced at the public hook."""

    def __init__(self, backup_dir: str, *, save_dir: str | None = None):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.save_dir = (save_dir or backup_dir).rstrip("/")

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except Exception as err:  # noqa: BLE001 - truncated, not a weights file, or another model's: one line
            raise TrainingError(
                f"backup {self.backup_dir}: cannot be restored into this model ({first_line(err, 160)}); it is "
                "damaged or was trained with another model or optimizer: rerun with the config it was trained with "
                "(config.yaml in the output dir), or delete the backup to start over, or use another train.output_dir"
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        storage.makedirs(self.save_dir)
        partial = storage.join(self.save_dir, "latest.tmp.weights.h5")
        try:
            self.model.save_weights(partial, overwrite=True)  # the optimizer's state too: its step drives the LR
        except OSError:
            if storage.exists(partial):
                storage.remove(partial)
            raise
        storage.rename(partial, storage.join(self.save_dir, "latest.weights.h5"))
        # Metadata last: a kill between the two renames redoes one epoch, never skips one.
        meta = {"epoch": epoch + 1, "batch": 0}
        storage.write_bytes(storage.join(self.save_dir, BACKUP_METADATA), json.dumps(meta).encode())


# --------------------------------------------------------------------------- from config
@dataclass(frozen=True)
class Inputs:
    """What the callbacks take from the job around them (nfp.training.train hands them on)."""

    run: RunLogger  # epoch metrics and the strips' images go here (its no-op twin off the chief)
    has_validation: bool = True  # fit gets validation data: val_* appear in the logs
    strip_clips: np.ndarray | None = None  # the fixed validation clips of the prediction strips
    eval_batches: Callable | None = None  # → the validation clips the periodic evaluation scores
    fresh: bool = True  # no epoch done yet: the strips start at step 0, the untrained model
    jit_compile: bool = (
        False  # the evaluation's and strips' rollouts XLA-compiled, as training is (nfp.distribute.devices)
    )
    stops: tuple = ()  # job control (SIGTERM, takeover): raise at the next batch
    scratch_dir: str | None = None  # off the chief, files go here (default: a new temporary dir)
    worker_metrics: keras.callbacks.Callback | None = None  # off the chief: its machine's system metrics to MLflow
    pruning: keras.callbacks.Callback | None = None  # a sweep's trial: reports to its study, stops a pruned trial


def build_callbacks(cfg, job: Job, inputs: Inputs) -> list:
    """The callbacks `cfg.train` and `cfg.evaluate.every_n_epochs` enable, in groups, in the order they must run:
    each group reads what the groups before it added to the epoch logs."""
    scratch = job.output if job.is_chief else RunDir(inputs.scratch_dir or tempfile.mkdtemp(prefix="nfp-worker-"))
    checkpoints, backup = checkpoints_and_backup(cfg, job, scratch, inputs.has_validation)
    return [
        *evaluation(cfg, job, inputs),  # adds val_mse, val_ssim, …: first, so every later callback can watch them
        *([inputs.pruning] if inputs.pruning else []),  # a pruned trial's last epoch is still saved and logged
        *learning_rate(cfg, job, inputs.has_validation),  # plateau watches them
        *stopping(cfg, inputs.has_validation),  # a NaN raises before anything saves the epoch
        *checkpoints,
        *logs_and_pictures(cfg, job, scratch, inputs),  # record everything above
        *backup,  # last: an epoch counts as done only once everything about it is written
        *inputs.stops,  # after the backup, so a stop at an epoch's end keeps that epoch
    ]


def evaluation(cfg, job: Job, inputs: Inputs) -> list:
    """The chief's periodic OpenSTL evaluation on validation clips (evaluate.every_n_epochs)."""
    e = cfg.evaluate
    if not (e.every_n_epochs and job.is_chief and inputs.eval_batches is not None):
        return []
    return [
        PeriodicEvaluation(inputs.eval_batches, every=e.every_n_epochs, evaluate_cfg=e, jit_compile=inputs.jit_compile)
    ]


def learning_rate(cfg, job: Job, has_validation: bool) -> list:
    """train.schedule plateau's callback; every other schedule moves the LR per step inside the optimizer (nfp.models.optim)."""
    t = cfg.train
    if t.schedule.name != "plateau":
        return []
    monitor = _monitor(t.checkpoint.monitor, has_validation)
    return [plateau_callback(t, job.replicas, job.steps_per_epoch, monitor=monitor, mode=_mode(monitor))]


def stopping(cfg, has_validation: bool) -> list:
    """Stop on a NaN loss (raise, not stop: a graceful stop would still save the NaN weights) and early stopping."""
    t = cfg.train
    callbacks: list = []
    if t.terminate_on_nan:
        callbacks.append(keras.callbacks.TerminateOnNaN(raise_error=True))
    if t.early_stopping.enabled:
        monitor = _monitor(t.early_stopping.monitor, has_validation)
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=monitor, mode=_mode(monitor), patience=t.early_stopping.patience)
        )
    return callbacks


def checkpoints_and_backup(cfg, job: Job, scratch: RunDir, has_validation: bool) -> tuple[list, list]:
    """(best/last .keras checkpoints, the backup a rerun resumes from); the backup runs last of all (see above)."""
    t, out = cfg.train, job.output
    checkpoints: list = []
    if t.checkpoint.save_best:
        monitor = _monitor(t.checkpoint.monitor, has_validation)
        checkpoints.append(
            AtomicCheckpoint(
                scratch.best,
                monitor=monitor,
                mode=_mode(monitor),
                save_best_only=True,
                initial_value_threshold=_best_so_far(out.csv, monitor),
            )
        )
    if t.checkpoint.save_last:
        checkpoints.append(AtomicCheckpoint(scratch.last))
    return checkpoints, [Backup(out.backup, save_dir=scratch.backup)] if t.backup else []


def logs_and_pictures(cfg, job: Job, scratch: RunDir, inputs: Inputs) -> list:
    """Throughput and LR into the logs, then the chief's prediction strips, the CSV, TensorBoard and MLflow."""
    t, out = cfg.train, job.output
    callbacks: list = [EpochStats(job.clips_per_epoch)]
    clips = inputs.strip_clips
    if t.images.every_n_epochs and job.is_chief and clips is not None and len(clips):
        callbacks.append(
            PredictionImages(
                clips,
                every=t.images.every_n_epochs,
                context_frames=cfg.evaluate.context_frames,
                predict_frames=cfg.evaluate.predict_frames,
                images_dir=out.images,
                sink=inputs.run.log_image if inputs.run.active else None,
                at_start=inputs.fresh,
                jit_compile=inputs.jit_compile,
            )
        )
    if t.csv_log:
        storage.makedirs(scratch.root)  # CSVLogger opens the file but makes no dirs
        callbacks.append(CSVLog(scratch.csv, append=True))
    if t.tensorboard and job.is_chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=out.tensorboard))
    if inputs.run.active:
        callbacks.append(inputs.run.keras_callback())
    if inputs.worker_metrics is not None:
        callbacks.append(inputs.worker_metrics)
    return callbacks


def _monitor(name: str, has_validation: bool) -> str:
    """Without validation data val_* never appears in the logs: watch the training metric instead."""
    return name if has_validation or not name.startswith("val_") else name[len("val_") :]


def _best_so_far(csv_path: str, monitor: str) -> float | None:
    """The best `monitor` value in earlier epochs (a resumed run must not overwrite a better best.keras)."""
    values = [v for v in read_csv_history(csv_path).get(monitor, []) if not math.isnan(v)]
    if not values:
        return None
    return max(values) if _mode(monitor) == "max" else min(values)


def _mode(monitor: str) -> str:
    """Higher is better for SSIM, PSNR, accuracy and AUC; lower for losses, MSE and MAE."""
    return "max" if any(s in monitor for s in ("ssim", "psnr", "acc", "auc")) else "min"


# --------------------------------------------------------------------------- preemption, takeover
def stops_when_taken_over(hold: Hold):
    """A callback that stops training at the next batch once another job took the output dir over (see rundir)."""
    import keras

    class StopWhenTakenOver(keras.callbacks.Callback):
        def _raise_if_lost(self, *args, **kwargs):
            if hold.lost.is_set():
                raise TrainingError(hold.reason)

        on_train_batch_end = on_test_batch_end = on_epoch_end = _raise_if_lost

    return StopWhenTakenOver()


@contextlib.contextmanager
def sigterm_stops(backup_dir: str):
    """SIGTERM → SystemExit(143) with a message, at once (the backup holds the last completed epoch).

    Yields a callback for fit: Python drops an exception a signal handler raises while a __del__ or GC
    callback runs ("Exception ignored in …"), and training would go on; the callback raises it again at the
    next batch. A SIGTERM inside a call into a local tracking store (SQLAlchemy: milliseconds) stops there too, not
    in the call: SQLAlchemy would print the traceback of the statement it broke off."""
    import threading

    import keras

    received = threading.Event()

    class StopAfterSigterm(keras.callbacks.Callback):
        def _raise_if_received(self, *args, **kwargs):
            if received.is_set():
                raise SystemExit(128 + signal.SIGTERM)

        on_train_batch_end = on_test_batch_end = on_epoch_end = _raise_if_received

    if threading.current_thread() is not threading.main_thread():
        yield StopAfterSigterm()
        return

    def _stop(signum, frame):
        if not received.is_set():
            print(
                f"train: SIGTERM received, stopping; re-run the same command to resume from {backup_dir}",
                file=sys.stderr,
                flush=True,
            )
        received.set()
        if not _inside_a_store_call(frame):
            raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield StopAfterSigterm()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _inside_a_store_call(frame) -> bool:
    """Whether the interrupted `frame` runs inside SQLAlchemy (MLflow's sqlite or database store)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("sqlalchemy."):
            return True
        frame = frame.f_back
    return False
