"""`nfp train`: config → strategy → data → model → fit with callbacks → MLflow, resumable.

Re-running the same command continues from the last completed epoch (BackupAndRestore in
<output_dir>/backup), into the same MLflow run. SIGTERM (a preempted VM) stops at once with
the backup of the last completed epoch kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

from nfp import callbacks as cb
from nfp import storage, tracking, visualize
from nfp.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
_LOSSES = {"bce": "BinaryCrossentropy", "mse": "MeanSquaredError"}


def train(cfg, *, config_path=None) -> dict:
    """Train `cfg.model` on `cfg.data`; return {"history", "run_id", "output_dir", "best_checkpoint", "last_checkpoint"}."""
    from nfp.distribute import cluster_info

    info = cluster_info()  # reads TF_CONFIG (set from SkyPilot env if need be); no TF work yet
    if cfg.tracking.enabled and info.is_chief:
        tracking.check_reachable()  # before any compute: a dead server must not cost a run
        tracking.check_register_name(cfg.tracking.register_as)
        tracking.check_artifact_location(cfg.tracking.experiment)

    import keras
    import tensorflow as tf

    from nfp.data import pipeline, prepare
    from nfp.distribute import global_batch_size, make_strategy
    from nfp.model import build_model

    strategy = make_strategy(cfg.distribute)  # first TF work: MultiWorkerMirroredStrategy insists
    t = cfg.train
    manifest = prepare.ensure_prepared(cfg.data)  # deterministic and atomic: safe on every worker

    replicas = strategy.num_replicas_in_sync
    global_batch = global_batch_size(t.batch_size, strategy)
    train_count = pipeline.split_size(cfg.data, "train")
    if train_count < global_batch:  # full batches only: not even one step
        raise ConfigError(
            f"train.batch_size: global batch {global_batch} ({t.batch_size} × {replicas} replicas) exceeds the "
            f"{train_count} training clips, expected at most {train_count // replicas} per replica"
        )
    steps = t.steps_per_epoch or train_count // global_batch
    val_count = pipeline.split_size(cfg.data, "val")
    keras.utils.set_random_seed(t.seed)
    train_ds = pipeline.make_dataset(cfg.data, "train", global_batch, training=True, num_workers=info.num_workers)
    val_ds = pipeline.make_dataset(cfg.data, "val", global_batch, training=False, num_workers=info.num_workers)
    if info.num_workers == 1:
        val_steps = t.validation_steps  # None: one whole pass per epoch, the last partial batch included
    else:
        # Every worker must run the same count of full batches (a whole number of executions): repeat and count.
        spe = t.steps_per_execution
        val_steps = t.validation_steps or val_count // global_batch // spe * spe
        val_ds = val_ds.repeat() if val_steps else None
    if not val_count or val_ds is None:
        log.warning("validation split (%d clips) too small for the global batch (%d): training without validation", val_count, global_batch)
        val_ds = None

    if info.num_workers > 1 and "://" not in t.output_dir:
        log.warning("train.output_dir %s is local: with %d workers it must be one directory all of them see "
                    "(gs://…), or a restarted worker resumes from nothing", t.output_dir, info.num_workers)

    gpus = tf.config.list_physical_devices("GPU")
    policy = keras.mixed_precision.global_policy()
    if t.mixed_precision and gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    elif t.mixed_precision:
        log.warning("train.mixed_precision: no GPU visible, training in float32")
    try:
        with strategy.scope():
            model = build_model(cfg.model, image_size=cfg.data.image_size)
            optimizer = getattr(keras.optimizers, _OPTIMIZERS[t.optimizer])(learning_rate=cb.base_learning_rate(t, replicas))
            model.compile(
                optimizer=optimizer,
                loss=getattr(keras.losses, _LOSSES[t.loss])(),
                jit_compile=t.jit_compile == "on" or (t.jit_compile == "auto" and bool(gpus)),
                steps_per_execution=t.steps_per_execution,
            )
    finally:
        keras.mixed_precision.set_global_policy(policy)  # the process-wide policy is not ours to keep

    output_dir = t.output_dir
    where = cb.paths(output_dir)
    start = cb.resume_epoch(where["backup"]) if t.backup else 0
    if info.is_chief:
        tf.io.gfile.makedirs(output_dir)
        cb.trim_csv(where["csv"], start)
    if start >= t.epochs:
        print(f"train: all {t.epochs} epochs already done in {where['backup']}; raise train.epochs to go on, "
              f"or use another train.output_dir to start over", file=sys.stderr)
    elif start:
        print(f"train: resuming after epoch {start} of {t.epochs} from {where['backup']}", file=sys.stderr)

    with contextlib.ExitStack() as stack:
        scratch = None if info.is_chief else stack.enter_context(tempfile.TemporaryDirectory(prefix="nfp-worker-"))
        run = stack.enter_context(tracking.start_run(cfg, is_chief=info.is_chief, state_dir=output_dir))
        stop_after_sigterm = stack.enter_context(_sigterm_stops(where["backup"]))
        if info.is_chief:
            _log_setup(run, cfg, config_path, manifest, model, strategy, info, replicas, global_batch, steps, gpus, output_dir)
        val_clips = (
            pipeline.read_clips(cfg.data, "val", t.images.num_clips) if info.is_chief and t.images.every_n_epochs and val_count else None
        )
        callbacks = cb.build_callbacks(
            cfg, output_dir=output_dir, is_chief=info.is_chief, replicas=replicas, clips_per_epoch=steps * global_batch,
            scratch_dir=scratch, has_validation=val_ds is not None, val_clips=val_clips,
            val_clip_batches=lambda: pipeline.clip_batches(cfg.data, "val", cfg.evaluate.batch_size, cfg.evaluate.max_clips),
            image_sink=run.log_image if run.active else None, tracking_callback=run.keras_callback(),
        )
        try:
            with pipeline.naming_bad_shards(cfg.data, "train", "val"):
                history = model.fit(
                    train_ds, epochs=t.epochs, steps_per_epoch=steps, validation_data=val_ds,
                    validation_steps=val_steps if val_ds is not None else None, callbacks=[*callbacks, stop_after_sigterm], verbose=t.verbose,
                    shuffle=False,  # the pipeline shuffles; Keras would warn that it ignores shuffle=True
                )
        except tf.errors.UnavailableError as err:
            if info.num_workers < 2:
                raise
            # TF aborts every collective once a peer's connection drops or its heartbeats stop; only a restart of
            # every worker recovers (no elastic training), and the backup makes that a resume.
            reason = str(err).split("Collective ops is aborted by:", 1)[-1].strip().splitlines()[0]
            raise TrainingError(
                f"a worker was lost in epoch {_epoch_of(callbacks) + 1} ({reason}): stopped; start every worker again "
                f"with the same command: training resumes from {where['backup']}"
            ) from None
        except RuntimeError as err:
            if "NaN or Inf loss" not in str(err):
                raise
            raise TrainingError(
                f"loss became NaN/Inf in epoch {_epoch_of(callbacks) + 1}: stopped; last good state kept in {where['backup']} "
                f"and {where['checkpoints']} (try a lower train.learning_rate)"
            ) from None
        trained = len(history.history.get("loss", []))
        if info.is_chief and trained:  # a finished job re-run trains nothing and logs nothing again
            _log_results(run, cfg, model, where, output_dir)
        if info.is_chief:
            print(f"train: {trained} epoch(s) trained, outputs in {output_dir}"
                  + (f", MLflow run {run.run_id}" if run.active else ""), file=sys.stderr)
        return {
            "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "run_id": run.run_id,
            "output_dir": output_dir,
            "best_checkpoint": where["best"] if t.checkpoint.save_best and tf.io.gfile.exists(where["best"]) else None,
            "last_checkpoint": where["last"] if t.checkpoint.save_last and tf.io.gfile.exists(where["last"]) else None,
        }


# --------------------------------------------------------------------------- tracking
def _log_setup(run, cfg, config_path, manifest, model, strategy, info, replicas, global_batch, steps, gpus, output_dir):
    import keras
    import mlflow
    import tensorflow as tf

    from nfp.distribute import strategy_name

    run.log_params({
        **cfg.flat(),
        "replicas": replicas,
        "num_workers": info.num_workers,
        "global_batch_size": global_batch,
        "steps_per_epoch": steps,
        "model_params": model.count_params(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mlflow_version": mlflow.__version__,
        "data_manifest_id": manifest.get("id"),
    })
    run.set_tags({"strategy": strategy_name(strategy), "device": _device_kind(gpus), **({"config_file": str(config_path)} if config_path else {})})
    with tempfile.TemporaryDirectory() as tmp:
        for name, artifact, text in (
            ("config.yaml", "config/resolved.yaml", tracking.redact(cfg.to_yaml())),
            ("manifest.json", "data/manifest.json", tracking.redact(json.dumps(manifest, indent=2))),
        ):
            storage.write_bytes(f"{output_dir.rstrip('/')}/{name}", text.encode())
            folder, _, base = artifact.partition("/")
            local = Path(tmp, base)
            local.write_text(text)
            run.log_artifact(str(local), folder)


def _log_results(run, cfg, model, where, output_dir):
    """CSV, loss/LR curves (from the whole CSV, so a resumed run shows every epoch), a predicted-clip GIF, checkpoints, the model."""
    import tensorflow as tf

    from nfp.data import pipeline
    from nfp.model import build_model, rollout

    # A plain copy outside the strategy: predicting with a multi-worker model would wait on the other workers.
    export = build_model(cfg.model, image_size=cfg.data.image_size)
    export.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        csv_local = _local_copy(where["csv"], tmp)
        if csv_local:
            run.log_artifact(csv_local, "logs")
        history = cb.read_csv_history(where["csv"])
        if history:
            fig = visualize.history_figure(history)
            fig.savefig(os.path.join(tmp, "history.png"))
            storage.write_bytes(f"{output_dir.rstrip('/')}/history.png", Path(tmp, "history.png").read_bytes())
            run.log_figure(fig, "plots/history.png")

        clip = pipeline.read_clips(cfg.data, "val", 1)
        if len(clip):
            frames = clip.astype(np.float32)[..., None] / 255.0
            k = max(1, min(cfg.evaluate.context_frames, frames.shape[1] - 1))
            n = max(1, min(cfg.evaluate.predict_frames, frames.shape[1] - k))
            pred = rollout(export, frames[:, :k], n)[0]
            gif = visualize.write_gif(
                visualize.side_by_side_frames(frames[0, : k + n], np.concatenate([frames[0, :k], pred])), os.path.join(tmp, "clip.gif")
            )
            storage.write_bytes(f"{output_dir.rstrip('/')}/prediction.gif", gif.read_bytes())
            run.log_artifact(str(gif), "predictions")

        if cfg.tracking.log_checkpoints:
            for key in ("best", "last"):
                local = _local_copy(where[key], tmp) if tf.io.gfile.exists(where[key]) else None
                if local:
                    run.log_artifact(local, "checkpoints")
        if cfg.tracking.log_model and len(clip):
            run.log_model(export, input_example=frames[:1, :-1], register_as=cfg.tracking.register_as)


def _local_copy(path: str, tmp: str) -> str | None:
    """`path` itself when local, else a copy in `tmp` (MLflow logs local files)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    if "://" not in path:
        return path
    local = os.path.join(tmp, os.path.basename(path))
    tf.io.gfile.copy(path, local, overwrite=True)
    return local


def _device_kind(gpus) -> str:
    import tensorflow as tf

    if not gpus:
        return "CPU"
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"{len(gpus)}x {name}"


def _epoch_of(callbacks) -> int:
    stats = next((c for c in callbacks if isinstance(c, cb.EpochStats)), None)
    return getattr(stats, "epoch", 0) if stats else 0


# --------------------------------------------------------------------------- preemption
@contextlib.contextmanager
def _sigterm_stops(backup_dir: str):
    """SIGTERM → SystemExit(143) with a message, at once (the backup holds the last completed epoch).

    Yields a callback for fit: Python drops an exception a signal handler raises while a __del__ or GC
    callback runs ("Exception ignored in …"), and training would go on; the callback raises it again at the
    next batch."""
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
            print(f"train: SIGTERM received, stopping; re-run the same command to resume from {backup_dir}", file=sys.stderr, flush=True)
        received.set()
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield StopAfterSigterm()
    finally:
        signal.signal(signal.SIGTERM, previous)
