"""Evaluate a model on a split with OpenSTL's metrics, beside the copy-last-frame and mean-frame baselines.

Protocols (evaluate.protocol, recorded in the report):
- rollout: the first `context_frames` frames in, the next `predict_frames` predicted
  autoregressively — each prediction is appended to the input for the next step, so nothing
  after the context is ever seen (the benchmark protocol, 10 → 10 on Moving MNIST).
- one_step: the seed's shift protocol, teacher-forced: frames 0..T-2 in, each output t scored
  against true frame t+1 (what training's val_loss measures).
Baselines get exactly the inputs the model gets: copy-last repeats the last input frame,
mean-frame predicts the mean of the input frames (in one_step, of all frames seen so far).
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from nfp.errors import ConfigError, DataError, ModelError, TrackingError

PROTOCOLS = ("rollout", "one_step")
PREDICTORS = ("model", "copy_last", "mean_frame")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------- model sources
def load_model(model_uri: str):
    """A keras.Model from a checkpoint .keras path, an MLflow run id, or a runs:/ or models:/ URI."""
    return resolve_model(model_uri)[0]


def resolve_model(model_uri: str):
    """(model, id of the MLflow run it came from or None, the concrete source loaded) for load_model's sources."""
    source = _run_model_uri(model_uri) if _RUN_ID.match(model_uri) and not os.path.exists(model_uri) else model_uri
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        _get_run(run_id)
        if path.endswith((".keras", ".h5")):
            return _load_run_artifact(run_id, path), run_id, source
        return _load_mlflow_model(source), run_id, source
    if source.startswith("models:/"):
        model = _load_mlflow_model(source)
        return model, _model_source_run(source), source
    return _load_checkpoint(source), None, source


def _load_checkpoint(path: str):
    import fsspec
    import keras

    fs, local = fsspec.core.url_to_fs(path)
    if not fs.exists(local):
        raise ModelError(f"checkpoint {path}: not found (expected a .keras file, an MLflow run id, runs:/… or models:/… URI)")
    if fs.isdir(local):
        raise ModelError(f"checkpoint {path}: is a directory, expected a .keras file")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - any load failure means "not a usable checkpoint"
        raise ModelError(f"checkpoint {path}: cannot be loaded as a Keras model ({_first_line(err)})") from err


def _get_run(run_id: str):
    import mlflow

    try:
        return mlflow.MlflowClient().get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MlflowException for unknown ids, others for a bad store
        raise ModelError(f"MLflow run {run_id}: not found at {mlflow.get_tracking_uri()} ({_first_line(err)})") from None


def _load_mlflow_model(uri: str):
    import mlflow.keras

    try:
        return mlflow.keras.load_model(uri)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"MLflow model {uri}: cannot be loaded ({_first_line(err)})") from err


def _load_run_artifact(run_id: str, path: str):
    import mlflow

    dst = tempfile.mkdtemp(prefix="nfp-model-")
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"MLflow run {run_id}: no artifact {path} ({_first_line(err)})") from None
    return _load_checkpoint(local)


def _run_model_uri(run_id: str) -> str:
    """A run's best checkpoint artifact (selected on validation, as OpenSTL tests), else its logged model, else any .keras."""
    import mlflow

    run = _get_run(run_id)
    checkpoints = sorted(_keras_artifacts(mlflow.MlflowClient(), run_id, None), key=lambda p: ("best" not in Path(p).name, p))
    if checkpoints and "best" in Path(checkpoints[0]).name:
        return f"runs:/{run_id}/{checkpoints[0]}"
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    if models:
        return f"models:/{max(models, key=lambda m: m.creation_timestamp).model_id}"
    if checkpoints:
        return f"runs:/{run_id}/{checkpoints[0]}"
    raise ModelError(f"MLflow run {run_id}: has no .keras checkpoint artifact and no logged model")


def _keras_artifacts(client, run_id: str, path: str | None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found += _keras_artifacts(client, run_id, item.path)
        elif item.path.endswith(".keras"):
            found.append(item.path)
    return found


def _model_source_run(uri: str) -> str | None:
    """The run a models:/ URI was logged from (models:/m-ID, models:/NAME/VERSION, models:/NAME@ALIAS)."""
    import mlflow

    ref = uri.removeprefix("models:/").strip("/")
    client = mlflow.MlflowClient()
    try:
        if ref.startswith("m-") and "/" not in ref:
            return mlflow.get_logged_model(ref).source_run_id
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = ref.rpartition("/")
        return client.get_model_version(name, version).run_id
    except Exception:  # noqa: BLE001 - the model loaded; its lineage is a nice-to-have
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:200] if text else type(err).__name__)


# --------------------------------------------------------------------------- protocols
def check_compatible(model, frame_shape) -> None:
    """ModelError unless the model takes (batch, time, H, W, C) clips with frame_shape = (H, W, C)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return  # subclassed model without a declared input: its first call will tell
    shape = tuple(inputs[0].shape)
    if len(shape) != 5:
        raise ModelError(f"model input {shape}: expected 5-D (batch, time, H, W, channels)")
    expected = shape[2:]
    if any(e is not None and e != g for e, g in zip(expected, frame_shape)):
        raise ModelError(
            f"model expects frames H×W×C = {'×'.join(str(e) for e in expected)}, "
            f"the clips are {'×'.join(map(str, frame_shape))} (wrong data.dir or image_size?)"
        )


def to_frames(clips):
    """uint8 clips (batch, time, H, W[, C]) → float32 (batch, time, H, W, C) in [0, 1]."""
    import tensorflow as tf

    x = tf.cast(clips, tf.float32) / 255.0
    return x[..., None] if x.shape.rank == 4 else x


def baselines(inputs, steps: int | None):
    """{"copy_last", "mean_frame"} predictions from input frames (batch, k, H, W, C).

    steps=N (rollout): N copies of the last input frame / of the mean input frame.
    steps=None (one_step): per position t, input frame t / the mean of input frames 0..t.
    """
    import tensorflow as tf

    if steps is None:
        seen = tf.cast(tf.range(1, tf.shape(inputs)[1] + 1), tf.float32)[None, :, None, None, None]
        return {"copy_last": inputs, "mean_frame": tf.cumsum(inputs, axis=1) / seen}
    return {
        "copy_last": tf.repeat(inputs[:, -1:], steps, axis=1),
        "mean_frame": tf.repeat(tf.reduce_mean(inputs, axis=1, keepdims=True), steps, axis=1),
    }


def evaluate_model(model, clip_batches_ds, *, protocol: str, context_frames: int, predict_frames: int) -> dict:
    """Stream uint8 clips (batch, T, H, W) through a protocol; OpenSTL metrics for the model and both baselines.

    Returns {"protocol", "context_frames", "predict_frames", "clips", "frames" (scored frame indices),
    "scores": {predictor: {metric: float}}, "per_frame": {predictor: {metric: [float per frame]}}}.
    """
    import tensorflow as tf

    from nfp.metrics import FrameMetrics
    from nfp.model import rollout

    if protocol not in PROTOCOLS:
        raise ConfigError(f"evaluate.protocol: got {protocol!r}, expected one of {', '.join(PROTOCOLS)}")
    accumulators = {name: FrameMetrics() for name in PREDICTORS}
    # one graph for every input length (rollout grows the input by a frame per step)
    forward = tf.function(lambda x, training=False: model(x, training=training), reduce_retracing=True)
    length = None
    for clips in clip_batches_ds:
        x = to_frames(clips)
        if length is None:
            length = int(x.shape[1])
            _check_lengths(protocol, context_frames, predict_frames, length)
            check_compatible(model, tuple(x.shape[2:]))
        if protocol == "rollout":
            inputs, truth = x[:, :context_frames], x[:, context_frames : context_frames + predict_frames]
            preds = {"model": rollout(forward, inputs, predict_frames), **baselines(inputs, predict_frames)}
        else:
            inputs, truth = x[:, :-1], x[:, 1:]
            preds = {"model": tf.cast(forward(inputs), tf.float32), **baselines(inputs, None)}
        for name in PREDICTORS:
            accumulators[name].update(truth, preds[name])
    if length is None:
        raise DataError("no clips to evaluate: the dataset is empty")
    if protocol == "rollout":
        frames = list(range(context_frames, context_frames + predict_frames))
    else:
        frames = list(range(1, length))
    return {
        "protocol": protocol,
        "context_frames": context_frames if protocol == "rollout" else None,
        "predict_frames": len(frames),
        "clips": accumulators["model"].clips,
        "frames": frames,
        "scores": {name: acc.result() for name, acc in accumulators.items()},
        "per_frame": {name: acc.per_frame() for name, acc in accumulators.items()},
    }


def _check_lengths(protocol: str, context: int, predict: int, length: int) -> None:
    if protocol == "rollout" and context >= length:
        raise ConfigError(f"evaluate.context_frames: got {context}, expected < the clip length {length}")
    if protocol == "rollout" and context + predict > length:
        raise ConfigError(
            f"evaluate.context_frames + evaluate.predict_frames: got {context}+{predict}, expected <= the clip length {length}"
        )


def flat_metrics(result: dict, prefix: str) -> dict[str, float]:
    """{"test_mse": …, "test_baseline_copy_last_mse": …}: one scalar per predictor and metric."""
    out = {}
    for name, scores in result["scores"].items():
        stem = prefix if name == "model" else f"{prefix}_baseline_{name}"
        out.update({f"{stem}_{metric}": value for metric, value in scores.items()})
    return out


# --------------------------------------------------------------------------- the `nfp evaluate` command
def run_evaluate(cfg, *, model_uri: str, split: str | None = None, out_dir: str | None = None, run_id: str | None = None) -> dict:
    """Evaluate model_uri on a split of cfg.data.dir; write report.json, per_frame.csv/png; log to MLflow."""
    from nfp.data.pipeline import clip_batches, naming_bad_shards, split_size
    from nfp.data.prepare import load_manifest

    e = cfg.evaluate
    split = split or e.split
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split: got {split!r}, expected train, val or test")
    track = cfg.tracking.enabled or run_id is not None
    if track:
        from nfp.tracking import check_reachable

        check_reachable()
    model, model_run, model_source = resolve_model(model_uri)
    # log into --run-id, else the `mlflow run` entry point's run, else the model's run, else a new run
    log_into = (run_id or os.environ.get("MLFLOW_RUN_ID") or model_run) if track else None
    if log_into:
        _existing_run(log_into)  # before any work, not after it
    manifest = load_manifest(cfg.data.dir)
    if split_size(cfg.data, split) == 0:
        raise DataError(f"split {split!r} of {cfg.data.dir}: has no clips (see data.split)")
    clip_length = int(manifest["clip_shape"][0])
    if e.protocol == "rollout":
        _check_lengths("rollout", e.context_frames, e.predict_frames, clip_length)
    check_compatible(model, tuple(manifest["clip_shape"][1:]) + (1,))

    dataset = clip_batches(cfg.data, split, e.batch_size, max_clips=e.max_clips)
    with naming_bad_shards(cfg.data, split):
        result = evaluate_model(
            model, dataset, protocol=e.protocol, context_frames=e.context_frames, predict_frames=e.predict_frames
        )
    summary = {"protocol": e.protocol, "split": split, "clips": result["clips"], **flat_metrics(result, split)}
    report = {
        "summary": summary,
        "model_uri": model_uri,
        "model_source": model_source,
        "model_run_id": model_run,
        "data_dir": cfg.data.dir,
        "data_id": manifest.get("id"),
        "split": split,
        **result,
    }
    out_dir = out_dir or f"{cfg.train.output_dir.rstrip('/')}/eval"
    with tempfile.TemporaryDirectory(prefix="nfp-eval-") as tmp:
        files = _write_report(report, Path(tmp))
        if track:
            report["mlflow_run_id"] = _log_to_mlflow(cfg, report, files, run_id=log_into, model_run=model_run)
            _write_json(report, files["report"])  # now with the run it was logged to
        publish(Path(tmp), out_dir)
    report["files"] = {name: f"{out_dir.rstrip('/')}/{path.name}" for name, path in files.items()}
    return report


def _write_report(report: dict, out: Path) -> dict[str, Path]:
    files = {"report": out / "report.json", "per_frame": out / "per_frame.csv", "plot": out / "per_frame.png"}
    _write_json(report, files["report"])
    names = list(report["per_frame"])
    metrics = list(report["per_frame"]["model"])
    with files["per_frame"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "step"] + [f"{n}_{m}" for n in names for m in metrics])
        for i, frame in enumerate(report["frames"]):
            writer.writerow([frame, i + 1] + [report["per_frame"][n][m][i] for n in names for m in metrics])
    _per_frame_figure(report).savefig(files["plot"], format="png")
    return files


def _write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(_finite(report), indent=2) + "\n")


def _finite(value):
    """inf (a perfect frame's PSNR) → null: JSON has no infinity."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _per_frame_figure(report: dict):
    """Each metric vs. prediction step, model and baselines, as a matplotlib Figure (Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.2), dpi=100)
    steps = list(range(1, len(report["frames"]) + 1))
    xlabel = "horizon (frames after the context)" if report["protocol"] == "rollout" else "frame (one step ahead)"
    xs = steps if report["protocol"] == "rollout" else report["frames"]
    for ax, metric in zip(fig.subplots(1, 4), ("mse", "mae", "ssim", "psnr")):
        for name, curves in report["per_frame"].items():
            ax.plot(xs, curves[metric], marker="o", markersize=3, label=name, linestyle="-" if name == "model" else "--")
        ax.set(title=metric.upper(), xlabel=xlabel)
    fig.axes[0].legend()
    fig.suptitle(f"{report['split']} split, {report['protocol']}, {report['clips']} clips")
    fig.tight_layout()
    return fig


def publish(local_dir: Path, out_dir: str) -> None:
    """Copy finished files into out_dir (local or any fsspec/TF URL), each written atomically."""
    from nfp import storage

    storage.makedirs(out_dir)
    for path in sorted(local_dir.iterdir()):
        storage.write_bytes(storage.join(out_dir, path.name), path.read_bytes())


def _existing_run(run_id: str) -> None:
    import mlflow

    try:
        mlflow.MlflowClient().get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MlflowException for unknown ids
        raise TrackingError(f"MLflow run {run_id} to log the evaluation into: not found at {mlflow.get_tracking_uri()} ({_first_line(err)})") from None


def _log_to_mlflow(cfg, report: dict, files: dict[str, Path], *, run_id: str | None, model_run: str | None) -> str:
    """Log metrics (scalars + per-frame curves as steps), tags and files into run_id, or a new run; → its id."""
    import time

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    split = report["split"]
    target, created = run_id, run_id is None
    if created:
        experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
        experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(cfg.tracking.experiment)
        target = client.create_run(experiment_id, run_name=f"evaluate-{split}").info.run_id
    now = int(time.time() * 1000)
    scalars = {k: v for k, v in report["summary"].items() if k.startswith(f"{split}_")}
    metrics = [Metric(k, float(v), now, 0) for k, v in scalars.items() if _loggable(v)]
    for name, curves in report["per_frame"].items():  # stepped: the UI plots metric vs. step (= horizon)
        stem = split if name == "model" else f"{split}_baseline_{name}"
        for metric, values in curves.items():
            metrics += [Metric(f"{stem}_{metric}_by_frame", float(v), now, i + 1) for i, v in enumerate(values) if _loggable(v)]
    for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
        client.log_batch(target, metrics=metrics[start : start + 1000])
    tags = {f"nfp.eval.{split}.protocol": report["protocol"], f"nfp.eval.{split}.model_uri": report["model_uri"]}
    if created:
        tags["nfp.model_uri"] = report["model_uri"]
        if model_run:
            tags["nfp.model_run_id"] = model_run
    for key, value in tags.items():
        client.set_tag(target, key, str(value))
    for path in files.values():
        client.log_artifact(target, str(path), artifact_path=f"eval/{split}")
    if created:
        client.set_terminated(target)
    return target


def _loggable(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
