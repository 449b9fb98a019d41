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
import re
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfp import callbacks as cb
from nfp import devices, storage, tracking, visualize
from nfp.errors import ConfigError, TrainingError, redact, tf_error_line
from nfp.job import Job, plan
from nfp.rundir import Hold, RunDir, held, read_csv_history, trim_csv

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
            run = stack.enter_context(tracking.start_run(self.cfg, is_chief=data.job.is_chief, state_dir=self.out.root))
            stops = [
                stack.enter_context(_sigterm_stops(self.out.backup)),
                *([_stops_when_taken_over(hold)] if hold else []),
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
        _check_tensorboard(cfg.train)
        if is_chief:
            _check_output_dir(cfg.train.output_dir)
        if cfg.train.backup:
            _check_backup_fits(cfg, self.out)
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
            _make_output_dir(self.out.root)
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
        job = plan(t, cluster=self.cluster, replicas=strategy.num_replicas_in_sync, train_clips=manifest.count("train"))
        keras.utils.set_random_seed(t.seed)
        train_ds = pipeline.make_dataset(
            cfg.data, manifest, "train", job.global_batch, training=True, num_workers=workers
        )
        val_ds, val_steps = _validation(cfg, manifest, job)
        if workers > 1 and storage.is_local(t.output_dir):
            log.warning(
                "train.output_dir %s is local: with %d workers it must be one directory all of them see "
                "(gs://…), or a restarted worker resumes from nothing",
                t.output_dir,
                workers,
            )
        return Data(manifest, job, train_ds, val_ds, val_steps)

    def make_model(self, strategy, data: Data):
        """(compiled model, device choices): precision and XLA chosen for the devices seen (nfp.devices)."""
        from nfp.distribute import strategy_name

        t = self.cfg.train
        self.devices_seen = devices.visible_devices()
        choices = devices.choose(
            t, self.cfg.model, self.devices_seen, replicated=strategy_name(strategy) != "DefaultStrategy"
        )
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
        _log_setup(
            run, self.cfg, data.job, config_path=self.config_path, manifest=data.manifest, model=model,
            strategy=strategy, devices_seen=self.devices_seen, choices=choices,
        )  # fmt: skip
        _log_doctor_reports(run, self.out)
        if not resumed:  # the data's look belongs to the run once, not again on each resume
            _log_preview(run, self.cfg.data.dir)

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
            strip_clips=pipeline.read_clips(cfg.data, manifest, "val", cfg.train.images.num_clips)
            if show_images
            else None,
            eval_batches=lambda: pipeline.clip_batches(
                cfg.data, manifest, "val", cfg.evaluate.batch_size, cfg.evaluate.max_clips
            ),
            fresh=fresh,
            jit_compile=choices.jit_compile,
            stops=tuple(stops),
            worker_metrics=worker_metrics,
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
                callbacks=callbacks,
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
    def results(self, run, data: Data, model, history) -> dict:
        """The chief logs what training made (once: a finished job rerun trains and logs nothing) and says where."""
        t, out, job = self.cfg.train, self.out, data.job
        trained = len(history.history.get("loss", []))
        if job.is_chief and trained:
            _log_results(run, self.cfg, job, model=model, manifest=data.manifest)
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


def _check_tensorboard(train_cfg) -> None:
    import importlib.util

    if train_cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "train.tensorboard: needs the tensorboard package; install it with pip install 'nfp[tensorboard]'"
        )


# What the backup's optimizer state is shaped by (the weights: the family's WEIGHT_KEYS): a change to any of them
# cannot resume from it (other changes, a learning rate or batch size, load, and tracking warns that the run keeps
# its original params).
_OPTIMIZER_STATE = {"adam": "moments", "adamw": "moments", "sgd": "none"}  # AdamW keeps Adam's variables


def _check_backup_fits(cfg, out: RunDir) -> None:
    """ConfigError before any work when the output dir's backup was trained with a model or optimizer this config
    cannot restore into, judged from the config.yaml the earlier attempt left; the keys named, old → new."""
    import yaml

    saved = out.file("config.yaml")
    if not out.resume_epoch() or not storage.exists(saved):
        return
    try:
        old = yaml.safe_load(storage.read_bytes(saved))
    except yaml.YAMLError:
        return  # no judgement to make from it: restoring the backup says what does not fit
    from nfp import models

    new = yaml.safe_load(cfg.to_yaml())
    if isinstance(old, dict) and isinstance(old.get("model"), dict):
        old["model"].setdefault("family", models.DEFAULT_FAMILY)  # a config from before families
    family = models.of_config(cfg.model)
    keys = [
        "model.family", *(f"model.{key}" for key in family.WEIGHT_KEYS),
        *(["model.norm"] if _at(new, "model.cell") == "keras" else []),  # norm layers hold weights
        *(["data.context_frames"] if family.KIND == "direct" else []),  # the frames a direct model stacks
    ]  # fmt: skip
    changed = [f"{k}: {_at(old, k)} → {_at(new, k)}" for k in keys if _at(old, k) != _at(new, k)]
    if _at(old, "model.family") != _at(new, "model.family"):
        changed = changed[:1]  # another family: its keys say nothing more
    was, now = _at(old, "train.optimizer"), _at(new, "train.optimizer")
    if _OPTIMIZER_STATE.get(was, was) != _OPTIMIZER_STATE.get(now, now):
        changed.append(f"train.optimizer: {was} → {now}")
    if changed:
        raise ConfigError(
            f"train.output_dir {out.root}: its backup was trained with another model or optimizer ({'; '.join(changed)})"
            f" and cannot be resumed with this config: rerun with the config it was trained with ({saved}), or use "
            "another train.output_dir to start over"
        )


def _at(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _check_output_dir(output_dir: str) -> None:
    """ConfigError now, before any data or model work, when the output dir could not be made (nothing is made yet)."""
    try:
        storage.check_could_write(output_dir)
    except OSError as err:
        raise ConfigError(f"train.output_dir: cannot write to {output_dir} ({err.strerror}: {err.filename})") from None


def _make_output_dir(output_dir: str) -> None:
    try:
        storage.make_writable_dir(output_dir)
    except OSError as err:
        raise ConfigError(f"train.output_dir: cannot write to {output_dir} ({err.strerror or err})") from None


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
    from nfp.optim import build_loss, build_optimizer, term_metrics

    t, terms = cfg.train, loss_terms(cfg.model)

    def build(xla: str):
        policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(choices.policy)
        try:
            with strategy.scope():
                model = _build_model(cfg, xla_cell=xla == "cell")
                model.compile(
                    optimizer=build_optimizer(t, replicas, steps_per_epoch),
                    loss=build_loss(t, terms),
                    metrics=term_metrics(terms),
                    jit_compile=xla == "step",
                    steps_per_execution=t.steps_per_execution,
                )
        finally:
            keras.mixed_precision.set_global_policy(policy)  # the process-wide policy is not ours to keep
        return model

    model = build(choices.xla)
    checked = devices.confirmed(choices, t.jit_compile, model, batch_shape, loss=build_loss(t, terms))
    return (model if checked.xla == choices.xla else build(checked.xla)), checked


def _build_model(cfg, *, xla_cell: bool = False):
    from nfp.models import build_model

    d = cfg.data
    return build_model(
        cfg.model, frame_shape=d.frame_shape, context_frames=d.context_frames, predict_frames=d.predict_frames,
        scheduled_sampling=cfg.train.scheduled_sampling, sampling_from=cfg.evaluate.context_frames, xla_cell=xla_cell,
    )  # fmt: skip


# --------------------------------------------------------------------------- tracking
# What people compare runs by, the run's params (columns of the runs table, axes of parallel coordinates). Kept to
# a few: MLflow's image cards list every param above the picture, and more than three lines of them push the
# prediction strips out of a card at its default size. The whole resolved config is the artifact
# config/resolved.yaml, the data the run's dataset input, the job's facts (replicas, global batch, …) its tags.
COMPARED_KEYS = ("model.preset", "train.learning_rate", "train.batch_size", "train.epochs")


def _log_setup(run, cfg, job: Job, *, config_path, manifest, model, strategy, devices_seen, choices):
    import keras
    import mlflow
    import tensorflow as tf

    from nfp.distribute import strategy_name

    flat = cfg.flat()
    run.log_params({key: flat[key] for key in COMPARED_KEYS})
    run.log_dataset(
        name=cfg.data.source,
        digest=manifest.id,
        source=redact(_data_origin(cfg.data)),
        clip_shape=list(manifest.clip_shape),
        counts={split: manifest.count(split) for split in manifest.splits},
    )
    run.set_tags(
        {
            "replicas": job.replicas,
            "num_workers": job.cluster.num_workers,
            "global_batch_size": job.global_batch,
            "steps_per_epoch": job.steps_per_epoch,
            "model_params": model.count_params(),
            "model_family": cfg.model.family,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "mlflow_version": mlflow.__version__,
            "data_manifest_id": manifest.id,
            "strategy": strategy_name(strategy),
            "device": _device_kind(devices_seen),
            "precision": choices.policy,
            "xla": choices.xla,
            **({"xla_fallback": choices.fallback} if choices.fallback else {}),
            **({"config_file": str(config_path)} if config_path else {}),
            # files data.on_bad_file=skip left out: which and why in data/manifest.json (source.skipped)
            **({"data_skipped_files": len(skipped)} if (skipped := manifest.content["source"].get("skipped")) else {}),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, artifact, text in (
            ("config.yaml", "config/resolved.yaml", redact(cfg.to_yaml())),
            ("manifest.json", "data/manifest.json", redact(json.dumps(manifest.content, indent=2))),
        ):
            storage.write_bytes(job.output.file(name), text.encode())
            folder, _, base = artifact.partition("/")
            local = Path(tmp, base)
            local.write_text(text)
            run.log_artifact(str(local), folder)


def _frame_keys(data_cfg) -> str:
    """The keys that size a frame, with their values: data.image_size (64), or data.frame_size (128×128), and
    data.channels (3) where set."""
    key, value = data_cfg.frame_hw_key
    return f"{key} ({value})" + (f" and data.channels ({data_cfg.channels})" if data_cfg.channels != 1 else "")


def _data_origin(data_cfg) -> str:
    """Where the clips came from: the download's URL, your own files' data.path, else the data dir."""
    if data_cfg.source == "download":
        return data_cfg.url
    return ", ".join(data_cfg.path) if data_cfg.path else data_cfg.dir


def _log_doctor_reports(run, out: RunDir) -> None:
    """`nfp doctor`'s reports (one per host, written before training by the launch scripts) → the run's doctor/."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in storage.listdir(out.doctor):
            local = _local_copy(storage.join(out.doctor, name), tmp) if name.endswith(".txt") else None
            if local:
                run.log_artifact(local, "doctor")


def _log_preview(run, data_dir: str) -> None:
    """preview.png/.gif of the data dir (written by prepare) → the run's data/ artifacts, next to the manifest."""
    from nfp.data import preview

    with tempfile.TemporaryDirectory() as tmp:
        for name in (preview.PNG, preview.GIF):
            local = _local_copy(storage.join(data_dir, name), tmp)
            if local:
                run.log_artifact(local, "data")


def _log_results(run, cfg, job: Job, *, model, manifest):
    """CSV, loss/LR curves (from the whole CSV, so a resumed run shows every epoch), a predicted-clip GIF, checkpoints, the model."""
    from nfp.data import pipeline
    from nfp.models import rollout

    out = job.output
    # A plain copy outside the strategy: predicting with a multi-worker model would wait on the other workers.
    export = _build_model(cfg)
    export.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        csv_local = _local_copy(out.csv, tmp)
        if csv_local:
            run.log_artifact(csv_local, "logs")
        history = read_csv_history(out.csv)
        if history:
            fig = visualize.history_figure(history)
            fig.savefig(os.path.join(tmp, "history.png"))
            storage.write_bytes(out.file("history.png"), Path(tmp, "history.png").read_bytes())
            run.log_figure(fig, "plots/history.png")

        clip = pipeline.read_clips(cfg.data, manifest, "val", 1) if manifest.count("val") else np.zeros((0,))
        if len(clip):
            frames = clip.astype(np.float32) / 255.0
            k = max(1, min(cfg.evaluate.context_frames, frames.shape[1] - 1))
            n = max(1, min(cfg.evaluate.predict_frames, frames.shape[1] - k))
            pred = rollout(export, frames[:, :k], n)[0]
            gif = visualize.write_gif(
                visualize.side_by_side_frames(frames[0, : k + n], np.concatenate([frames[0, :k], pred])),
                os.path.join(tmp, "clip.gif"),
            )
            storage.write_bytes(out.file("prediction.gif"), gif.read_bytes())
            run.log_artifact(str(gif), "predictions")

        if cfg.train.tensorboard and storage.is_local(out.tensorboard) and storage.exists(out.tensorboard):
            run.log_artifact(str(storage.local_path(out.tensorboard)), "tensorboard")  # the whole dir, every attempt's
        if cfg.tracking.log_checkpoints:
            for path in (out.best, out.last):
                local = _local_copy(path, tmp)
                if local:
                    run.log_artifact(local, "checkpoints")
        if cfg.tracking.log_model and len(clip):
            # served: the example's k context frames in, the next evaluate.predict_frames out unless a request says
            t = cfg.tracking
            run.log_model(export, frames[:1, :k], t.register_as, horizon=cfg.evaluate.predict_frames, alias=t.alias)


def _local_copy(path: str, tmp: str) -> str | None:
    """`path` itself when local, else a copy in `tmp` (MLflow logs local files); None when it does not exist."""
    if not storage.exists(path):
        return None
    if storage.is_local(path):
        return str(storage.local_path(path))
    local = os.path.join(tmp, os.path.basename(path))
    storage.get(path, Path(local))
    return local


def _device_kind(seen: list[devices.Device]) -> str:
    gpus = [d for d in seen if d.kind == "GPU"]
    return f"{len(gpus)}x {gpus[0].name}" if gpus else "CPU"


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


# --------------------------------------------------------------------------- preemption, takeover
def _stops_when_taken_over(hold: Hold):
    """A callback that stops training at the next batch once another job took the output dir over (see rundir)."""
    import keras

    class StopWhenTakenOver(keras.callbacks.Callback):
        def _raise_if_lost(self, *args, **kwargs):
            if hold.lost.is_set():
                raise TrainingError(hold.reason)

        on_train_batch_end = on_test_batch_end = on_epoch_end = _raise_if_lost

    return StopWhenTakenOver()


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
            print(
                f"train: SIGTERM received, stopping; re-run the same command to resume from {backup_dir}",
                file=sys.stderr,
                flush=True,
            )
        received.set()
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield StopAfterSigterm()
    finally:
        signal.signal(signal.SIGTERM, previous)
