"""`nfp train`: config → strategy → data → model → fit with callbacks → MLflow, resumable.

Re-running the same command continues from the last completed epoch (BackupAndRestore in
<output_dir>/backup), into the same MLflow run. SIGTERM (a preempted VM) stops at once with
the backup of the last completed epoch kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from nfp import storage, tracking, visualize
from nfp.distribute import devices
from nfp.errors import TrainingError, tf_error_line
from nfp.inference import serving
from nfp.rundir import Hold, RunDir, held, trim_csv
from nfp.sweep.pruning import trial_pruning
from nfp.tracking import training_run
from nfp.training import callbacks as cb
from nfp.training import preflight
from nfp.training.job import Job, plan

log = logging.getLogger(__name__)


def train(cfg, *, config_path=None) -> dict:
    """Train `cfg.model` on `cfg.data`; return {"history", "run_id", "output_dir", "best_checkpoint", "last_checkpoint"}."""
    return Training(cfg, config_path=config_path).run()


@dataclass
class Data:
    """The prepared data as training uses it: the manifest read once, the job it makes, the datasets for fit."""

    manifest: Any
    job: Job
    train: Any  # tf.data.Dataset of (input frames, next frames)
    val: Any | None  # None: too few validation clips for a global batch
    val_steps: int | None
    # The first validation clips, read once (on the chief) for what shows the model at work: the prediction strips
    # (train.images.num_clips of them) and the final GIF (the first); uint8 (n, T, H, W, C), None without any.
    val_head: np.ndarray | None = None


class Training:
    """One `nfp train` job, step by step: `run` reads as the story, each step is a method a test can call alone."""

    def __init__(self, cfg, *, config_path=None):
        from nfp.distribute import cluster_info

        self.cfg, self.config_path = cfg, config_path
        self.cluster = cluster_info()  # reads TF_CONFIG (set from SkyPilot env if need be); no TF work yet
        self.out = RunDir(cfg.train.output_dir)

    def run(self) -> dict:
        self.check()
        with contextlib.ExitStack() as stack:
            # The chief holds the output dir for the job (the other workers write to scratch dirs): at once when it
            # exists, as a job may be at work in it; else once it is made, just before training writes to it.
            hold = self.hold_output_dir(stack) if storage.exists(self.out.root) else None
            strategy = self.make_strategy()
            data = self.make_data(strategy)
            with self.failures_as_errors(data.job):
                model, choices = self.make_model(strategy, data)
            hold = hold or self.claim_output_dir(stack)
            start = self.resume_point()
            run = stack.enter_context(
                tracking.start_run(self.cfg, is_chief=data.job.is_chief, state_dir=self.out.root, model_flavor=serving)
            )
            stops = [
                stack.enter_context(cb.sigterm_stops(self.out.backup)),
                *([cb.stops_when_taken_over(hold)] if hold else []),
            ]
            self.log_setup(run, data, model, strategy, choices, resumed=bool(start))
            callbacks = self.make_callbacks(run, data, choices, fresh=not start, stops=stops, stack=stack)
            with self.failures_as_errors(data.job, callbacks):
                history = self.fit(model, data, callbacks)
            return self.results(run, data, model, history)

    # -- before any compute
    def check(self) -> None:
        """Every refusal that needs no data or model: credentials, extras, the output dir, the tracking server."""
        cfg, is_chief = self.cfg, self.cluster.is_chief
        storage.check_credentials(cfg.train.output_dir)
        preflight.check_tensorboard(cfg.train)
        if is_chief:
            preflight.check_output_dir(cfg.train.output_dir)
        if cfg.train.backup:
            preflight.check_backup_fits(cfg, self.out)
            preflight.check_same_data(cfg, self.out)
        if cfg.tracking.enabled and is_chief:
            tracking.check_reachable()  # a dead server must not cost a run
            tracking.check_can_log(cfg, state_dir=self.out.root)  # nor a deleted run or experiment
            tracking.check_register_name(cfg.tracking.register_as)
            tracking.check_artifact_location(cfg.tracking.experiment)

    def hold_output_dir(self, stack: contextlib.ExitStack) -> Hold | None:
        """The chief's hold on an existing output dir for the rest of the job (see nfp.rundir); None off the chief."""
        if not self.cluster.is_chief:
            return None
        return stack.enter_context(held(self.out, self.cfg.train.output_dir_lease_s))

    def claim_output_dir(self, stack: contextlib.ExitStack) -> Hold | None:
        """The chief makes the output dir (when no earlier attempt did) and holds it."""
        if not self.cluster.is_chief:
            return None
        if not storage.exists(self.out.root):
            preflight.make_output_dir(self.out.root)
        return self.hold_output_dir(stack)

    # -- strategy → data → model
    def make_strategy(self):
        from nfp.distribute import make_strategy

        return make_strategy(self.cfg.distribute)  # first TF work: MultiWorkerMirroredStrategy insists

    def make_data(self, strategy) -> Data:
        """The data prepared (deterministic and atomic: safe on every worker), the job planned on it, the datasets."""
        import keras

        from nfp.data import pipeline
        from nfp.data.prepare import ensure_prepared

        cfg, t, workers = self.cfg, self.cfg.train, self.cluster.num_workers
        manifest = ensure_prepared(cfg.data)
        job = plan(
            t, cluster=self.cluster, replicas=strategy.num_replicas_in_sync, train_clips=manifest.count("train"),
            output=self.out,
        )  # fmt: skip
        keras.utils.set_random_seed(t.seed)
        train_ds = pipeline.make_dataset(
            cfg.data, manifest, "train", job.global_batch, training=True, num_workers=workers
        )
        val_ds, val_steps = _validation(cfg, manifest, job)
        shown = max(t.images.num_clips, 1)
        val_head = (
            pipeline.read_clips(cfg.data, manifest, "val", shown) if job.is_chief and manifest.count("val") else None
        )
        if workers > 1 and storage.is_local(t.output_dir):
            log.warning(
                "train.output_dir %s is local: with %d workers it must be one directory all of them see "
                "(gs://…), or a restarted worker resumes from nothing",
                t.output_dir,
                workers,
            )
        return Data(manifest, job, train_ds, val_ds, val_steps, val_head)

    def make_model(self, strategy, data: Data):
        """(compiled model, device choices): precision and XLA chosen for the devices seen (nfp.distribute.devices)."""
        from nfp.distribute import strategy_name

        t = self.cfg.train
        choices = devices.choose(
            t, self.cfg.model, devices.visible_devices(), replicated=strategy_name(strategy) != "DefaultStrategy"
        )
        x_spec, y_spec = data.train.element_spec
        devices.check_step_fits(
            t, self.cfg.model, choices, frame_shape=tuple(x_spec.shape[2:]), input_frames=x_spec.shape[1],
            output_frames=y_spec.shape[1],
        )  # fmt: skip
        model, choices = compiled_model(
            self.cfg,
            strategy,
            data.job.replicas,
            choices,
            steps_per_epoch=data.job.steps_per_epoch,
            batch_shape=(t.batch_size, *data.train.element_spec[0].shape[1:]),
        )
        log.info("devices: %s", choices.why)
        return model, choices

    def resume_point(self) -> int:
        """Epochs already done (the backup's), the CSV trimmed to them, and a line saying where training stands."""
        t, out = self.cfg.train, self.out
        start = out.resume_epoch() if t.backup else 0
        if self.cluster.is_chief:
            trim_csv(out.csv, start)
        if start >= t.epochs:
            print(
                f"train: all {t.epochs} epochs already done in {out.backup}; raise train.epochs to go on, "
                f"or use another train.output_dir to start over",
                file=sys.stderr,
            )
        elif start:
            print(f"train: resuming after epoch {start} of {t.epochs} from {out.backup}", file=sys.stderr)
        return start

    # -- callbacks → fit
    def log_setup(self, run, data: Data, model, strategy, choices, *, resumed: bool) -> None:
        """The chief's record of what this job is: params, tags, config, manifest, doctor reports, the data's look."""
        if not data.job.is_chief:
            return
        training_run.log_setup(
            run, self.cfg, data.job, config_path=self.config_path, manifest=data.manifest, model=model,
            strategy=strategy, choices=choices,
        )  # fmt: skip
        training_run.log_doctor_reports(run, self.out)
        if not resumed:  # the data's look belongs to the run once, not again on each resume
            training_run.log_preview(run, self.cfg.data.dir)

    def make_callbacks(self, run, data: Data, choices, *, fresh: bool, stops, stack: contextlib.ExitStack) -> list:
        from nfp.data import pipeline

        cfg, job, manifest = self.cfg, data.job, data.manifest
        show_images = job.is_chief and cfg.train.images.every_n_epochs and manifest.count("val")
        worker_metrics = None  # the chief's system metrics come with its run; another worker logs its own into it
        if not job.is_chief and cfg.tracking.enabled and cfg.tracking.system_metrics:
            worker_metrics = tracking.worker_system_metrics(self.out.root, f"worker_{job.cluster.task_index}")
        inputs = cb.Inputs(
            run,
            has_validation=data.val is not None,
            strip_clips=data.val_head[: cfg.train.images.num_clips] if show_images else None,
            eval_batches=(
                lambda: pipeline.clip_batches(
                    cfg.data, manifest, "val", cfg.evaluate.batch_size, cfg.evaluate.max_clips
                )
            )
            if manifest.count("val")
            else None,  # no validation clips: no periodic evaluation (said once, with fit's validation)
            fresh=fresh,
            jit_compile=choices.jit_compile,
            stops=tuple(stops),
            worker_metrics=worker_metrics,
            pruning=trial_pruning(cfg) if job.is_chief else None,
            scratch_dir=None
            if job.is_chief
            else stack.enter_context(tempfile.TemporaryDirectory(prefix="nfp-worker-")),
        )
        return cb.build_callbacks(cfg, job, inputs)

    def fit(self, model, data: Data, callbacks: list):
        from nfp.data.shards import naming_bad_shards

        t = self.cfg.train
        with naming_bad_shards(self.cfg.data, data.manifest, "train", "val"):
            return model.fit(
                data.train,
                epochs=t.epochs,
                steps_per_epoch=data.job.steps_per_epoch,
                validation_data=data.val,
                validation_steps=data.val_steps,
                callbacks=[*callbacks, cb.ConsoleLine()],  # last: it prints what every callback added
                verbose=t.verbose if t.verbose is not None else (1 if sys.stdout.isatty() else 2),
                shuffle=False,  # the pipeline shuffles; Keras would warn that it ignores shuffle=True
            )

    @contextlib.contextmanager
    def failures_as_errors(self, job: Job, callbacks: list | None = None) -> Iterator[None]:
        """What building the model (no `callbacks`) or fit can die of, as one line saying where and what is kept."""
        import tensorflow as tf

        out, t = self.out, self.cfg.train
        where = f"in epoch {_epoch_of(callbacks) + 1}" if callbacks is not None else "while building the model"
        try:
            yield
        except (tf.errors.ResourceExhaustedError, MemoryError) as err:
            raise TrainingError(
                f"out of memory {where} ({_oom_line(err)}): lower train.batch_size ({t.batch_size} per replica), "
                f"model.filters ({self.cfg.model.filters}) or {_frame_keys(self.cfg.data)}"
                + (f"; {_kept(out)}" if callbacks is not None else "")
            ) from None
        except tf.errors.UnavailableError as err:
            if job.cluster.num_workers < 2:
                raise
            # TF aborts every collective once a peer's connection drops or its heartbeats stop; only a restart of
            # every worker recovers (no elastic training), and the backup makes that a resume.
            reason = str(err).split("Collective ops is aborted by:", 1)[-1].strip().splitlines()[0]
            raise TrainingError(
                f"a worker was lost in epoch {_epoch_of(callbacks) + 1} ({reason}): stopped; start every worker again "
                f"with the same command: training resumes from {out.backup}"
            ) from None
        except OSError as err:  # a full disk, a vanished mount: one line, and the last complete state named
            raise TrainingError(
                f"writing under {out.root} failed in epoch {_epoch_of(callbacks) + 1} ({err.strerror or err}): stopped; "
                f"{_kept(out)}"
            ) from None
        except RuntimeError as err:
            if "NaN or Inf loss" not in str(err):
                raise
            raise TrainingError(
                f"loss became NaN/Inf in epoch {_epoch_of(callbacks) + 1}: stopped; {_kept(out)} "
                "(try a lower train.learning_rate)"
            ) from None

    # -- results
    def prediction(self, model, data: Data, tmp: str):
        """(a plain copy of `model`, its served example (1, k, H, W, C), the predicted-clip GIF in `tmp`) from the first
        validation clip; example and GIF None without one. The copy is outside the strategy: predicting with a
        multi-worker model would wait on the other workers."""
        from nfp.models import rollout

        cfg, out = self.cfg, self.out
        export = _build_model(
            cfg.model,
            cfg.data,
            scheduled_sampling=cfg.train.scheduled_sampling,
            sampling_from=cfg.evaluate.context_frames,
        )
        export.set_weights(model.get_weights())
        if data.val_head is None:
            return export, None, None
        frames = data.val_head[:1].astype(np.float32) / 255.0
        k = max(1, min(cfg.evaluate.context_frames, frames.shape[1] - 1))
        n = max(1, min(cfg.evaluate.predict_frames, frames.shape[1] - k))
        pred = rollout(export, frames[:, :k], n)[0]
        gif = visualize.write_gif(
            visualize.side_by_side_frames(frames[0, : k + n], np.concatenate([frames[0, :k], pred])),
            os.path.join(tmp, "clip.gif"),
        )
        storage.write_bytes(out.file("prediction.gif"), gif.read_bytes())
        return export, frames[:1, :k], gif

    def results(self, run, data: Data, model, history) -> dict:
        """The chief logs what training made (once: a finished job rerun trains and logs nothing) and says where."""
        t, out, job = self.cfg.train, self.out, data.job
        trained = len(history.history.get("loss", []))
        if job.is_chief and trained:
            with tempfile.TemporaryDirectory() as tmp:
                export, example, gif = self.prediction(model, data, tmp)
                training_run.log_results(run, self.cfg, out, model=export, gif=gif, example=example)
        if job.is_chief:
            link = run.ui_url
            print(
                f"train: {trained} epoch(s) trained, outputs in {out.root}"
                + (f", MLflow run {run.run_id}" if run.active else "")
                + (f" ({link})" if link else ""),
                file=sys.stderr,
            )
        return {
            "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "run_id": run.run_id,
            "output_dir": out.root,
            "best_checkpoint": out.best if t.checkpoint.save_best and storage.exists(out.best) else None,
            "last_checkpoint": out.last if t.checkpoint.save_last and storage.exists(out.last) else None,
        }


def _validation(cfg, manifest, job: Job):
    """(validation dataset or None, validation_steps for fit)."""
    from nfp.data import pipeline

    val_count = manifest.count("val")
    workers = job.cluster.num_workers
    val_ds = (
        pipeline.make_dataset(cfg.data, manifest, "val", job.global_batch, training=False, num_workers=workers)
        if val_count
        else None
    )
    val_steps = cfg.train.validation_steps  # None: one whole pass per epoch, the last partial batch included
    if workers > 1 and val_ds is not None:
        # Every worker must run the same count of full batches (a whole number of executions): repeat and count.
        spe = cfg.train.steps_per_execution
        val_steps = val_steps or val_count // job.global_batch // spe * spe
        val_ds = val_ds.repeat() if val_steps else None
    if not val_count:
        log.warning(
            "no validation clips in %s (data.split.val gave none): training without validation: no val_loss, no "
            "periodic evaluation, no prediction strips",
            cfg.data.dir,
        )
        return None, None
    if val_ds is None:
        log.warning(
            "validation split (%d clips) too small for the global batch (%d): training without validation",
            val_count,
            job.global_batch,
        )
        return None, None
    return val_ds, val_steps


def compiled_model(cfg, strategy, replicas: int, choices: devices.Choices, *, batch_shape, steps_per_epoch: int = 1):
    """(model, choices): the configured model, built and compiled in the strategy's scope under `choices`' policy
    and XLA mode; under jit_compile auto, without XLA (and the cause in choices) when the model does not compile
    for (per-replica) batches of `batch_shape`. Also nfp doctor's and the XLA benchmark's model, which time steps
    (the LR schedule's length, `steps_per_epoch`, does not matter to them)."""
    import keras

    from nfp.models import loss_terms
    from nfp.models.optim import build_loss, build_optimizer, term_metrics

    t, terms = cfg.train, loss_terms(cfg.model)

    def build(xla: str):
        policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(choices.policy)
        try:
            with strategy.scope():
                model = _build_model(
                    cfg.model, cfg.data, scheduled_sampling=t.scheduled_sampling,
                    sampling_from=cfg.evaluate.context_frames, xla_cell=xla == "cell",
                )  # fmt: skip
                model.compile(
                    optimizer=build_optimizer(t, replicas, steps_per_epoch),
                    loss=build_loss(t, terms),
                    metrics=term_metrics(terms),
                    jit_compile=xla == "step",
                    steps_per_execution=t.steps_per_execution,
                )
                # Slots made now, not in the first step's trace: a step that creates variables is traced twice
                # (Keras builds them up front only under a non-default strategy)
                model.optimizer.build(model.trainable_variables)
        finally:
            keras.mixed_precision.set_global_policy(policy)  # the process-wide policy is not ours to keep
        return model

    model = build(choices.xla)
    checked = devices.confirmed(choices, t.jit_compile, model, batch_shape, loss=build_loss(t, terms))
    return (model if checked.xla == choices.xla else build(checked.xla)), checked


def _build_model(model_cfg, data_cfg, *, scheduled_sampling: int, sampling_from: int, xla_cell: bool = False):
    """`model_cfg`'s model for `data_cfg`'s clips (nfp.models.build_model): teacher forcing annealed over
    `scheduled_sampling` steps (train's), free-running from frame `sampling_from` (evaluate's context)."""
    from nfp.models import build_model

    d = data_cfg
    return build_model(
        model_cfg, frame_shape=d.frame_shape, context_frames=d.context_frames, predict_frames=d.predict_frames,
        scheduled_sampling=scheduled_sampling, sampling_from=sampling_from, xla_cell=xla_cell,
    )  # fmt: skip


def _frame_keys(data_cfg) -> str:
    """The keys that size a frame, with their values: data.image_size (64), or data.frame_size (128×128), and
    data.channels (3) where set."""
    key, value = data_cfg.frame_hw_key
    return f"{key} ({value})" + (f" and data.channels ({data_cfg.channels})" if data_cfg.channels != 1 else "")


def _oom_line(err: BaseException) -> str:
    """What ran out, e.g. "OOM when allocating tensor with shape[3,3,100000,400000] and type float on …CPU:0"."""
    line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", tf_error_line(err))  # TF's wrapper-function prefix
    return line.split(" by allocator", 1)[0][:160]


def _kept(out: RunDir) -> str:
    """What a stopped job leaves to resume or use: only the files that exist."""
    kept = [p for p in (out.backup, out.best, out.last) if storage.exists(p)]
    return f"last good state kept in {', '.join(kept)}" if kept else "no epoch had finished, nothing kept"


def _epoch_of(callbacks) -> int:
    stats = next((c for c in callbacks if isinstance(c, cb.EpochStats)), None)
    return getattr(stats, "epoch", 0) if stats else 0
