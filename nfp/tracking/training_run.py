"""What a training run logs: the params runs are compared by, the job's facts as tags, its data as the dataset
input, the resolved config and manifest; after training, its curves, prediction GIF, checkpoints and model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from nfp import storage, visualize
from nfp.distribute.devices import Device
from nfp.errors import redact
from nfp.rundir import RunDir, read_csv_history

# What people compare runs by, the run's params (columns of the runs table, axes of parallel coordinates). Kept to
# a few: MLflow's image cards list every param above the picture, and more than three lines of them push the
# prediction strips out of a card at its default size. The whole resolved config is the artifact
# config/resolved.yaml, the data the run's dataset input, the job's facts (replicas, global batch, …) its tags.
COMPARED_KEYS = ("model.preset", "train.learning_rate", "train.batch_size", "train.epochs")


def log_setup(run, cfg, job, *, config_path, manifest, model, strategy, choices) -> None:
    """What this job is: the compared params, its data as the dataset input, its facts as tags, the resolved config
    and the manifest (also written into the output dir beside the run's copies)."""
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
            "device": _device_kind(choices.devices),
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


def _data_origin(data_cfg) -> str:
    """Where the clips came from: the download's URL, your own files' data.path, else the data dir."""
    if data_cfg.source == "download":
        return data_cfg.url
    return ", ".join(data_cfg.path) if data_cfg.path else data_cfg.dir


def log_doctor_reports(run, out: RunDir) -> None:
    """`nfp doctor`'s reports (one per host, written before training by the launch scripts) → the run's doctor/."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in storage.listdir(out.doctor):
            local = _local_copy(storage.join(out.doctor, name), tmp) if name.endswith(".txt") else None
            if local:
                run.log_artifact(local, "doctor")


def log_preview(run, data_dir: str) -> None:
    """preview.png/.gif of the data dir (written by prepare) → the run's data/ artifacts, next to the manifest."""
    from nfp.data import preview

    with tempfile.TemporaryDirectory() as tmp:
        for name in (preview.PNG, preview.GIF):
            local = _local_copy(storage.join(data_dir, name), tmp)
            if local:
                run.log_artifact(local, "data")


def log_results(run, cfg, out, *, model, gif, example) -> None:
    """What training made, into the run: the CSV, loss/LR curves (from the whole CSV, so a resumed run shows every
    epoch), the predicted-clip GIF (`gif`, a file, or None), TensorBoard logs, checkpoints, and `model` served with
    `example`'s context frames (None: no validation clip to show it)."""
    with tempfile.TemporaryDirectory() as tmp:
        csv_local = _local_copy(out.csv, tmp)
        if csv_local:
            run.log_artifact(csv_local, "logs")
        history = read_csv_history(out.csv)
        if history:
            png = Path(tmp, "history.png")  # drawn once: the run's copy and the output dir's
            visualize.history_figure(history).savefig(png)
            storage.write_bytes(out.file("history.png"), png.read_bytes())
            run.log_artifact(png, "plots")
        if gif is not None:
            run.log_artifact(str(gif), "predictions")
        if cfg.train.tensorboard and storage.is_local(out.tensorboard) and storage.exists(out.tensorboard):
            run.log_artifact(str(storage.local_path(out.tensorboard)), "tensorboard")  # the whole dir, every attempt's
        if cfg.tracking.log_checkpoints:
            for path in (out.best, out.last):
                local = _local_copy(path, tmp)
                if local:
                    run.log_artifact(local, "checkpoints")
        if cfg.tracking.log_model and example is not None:
            # served: the example's k context frames in, the next evaluate.predict_frames out unless a request says
            t = cfg.tracking
            run.log_model(model, example, t.register_as, horizon=cfg.evaluate.predict_frames, alias=t.alias)


def _local_copy(path: str, tmp: str) -> str | None:
    """`path` itself when local, else a copy in `tmp` (MLflow logs local files); None when it does not exist."""
    if not storage.exists(path):
        return None
    if storage.is_local(path):
        return str(storage.local_path(path))
    local = os.path.join(tmp, os.path.basename(path))
    storage.get(path, Path(local))
    return local


def _device_kind(seen: list[Device]) -> str:
    gpus = [d for d in seen if d.kind == "GPU"]
    return f"{len(gpus)}x {gpus[0].name}" if gpus else "CPU"
