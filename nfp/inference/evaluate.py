"""`nfp evaluate`: score a model on a split of the prepared data next to the baselines (`scoring`), write
report.json, per_frame.csv and per_frame.png, and log them to MLflow."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from nfp import storage, tracking
from nfp.distribute import devices
from nfp.errors import DataError


def run_evaluate(
    cfg, *, model_uri: str, split: str | None = None, out_dir: str | None = None, run_id: str | None = None
) -> dict:
    """Evaluate model_uri on a split of cfg.data.dir; write report.json, per_frame.csv/png; log to MLflow."""
    from nfp import models
    from nfp.data.manifest import load_manifest
    from nfp.data.pipeline import clip_batches
    from nfp.data.shards import naming_bad_shards
    from nfp.inference import interruptible
    from nfp.inference.model_source import resolve_model
    from nfp.inference.scoring import check_lengths, evaluate_model, flat_metrics

    e = cfg.evaluate
    split = split or e.split  # checked already: --split by argparse's choices, evaluate.split by the config
    out_dir = storage.output_dir_flag(out_dir, storage.join(cfg.train.output_dir, "eval"))
    track = cfg.tracking.enabled or run_id is not None
    if track:
        tracking.check_reachable()
    model, model_run, model_source = resolve_model(model_uri)
    # log into --run-id, else the `mlflow run` entry point's run, else the model's run, else a new run
    log_into = (run_id or os.environ.get("MLFLOW_RUN_ID") or model_run) if track else None
    if log_into:  # before any work, not after it
        flag = "--run-id" if run_id else "MLFLOW_RUN_ID" if os.environ.get("MLFLOW_RUN_ID") else "the model's run"
        tracking.get_run(
            log_into,
            purpose=f" ({flag}) to log the evaluation into",
            live=True,
            instead=", or pass --run-id of another",
        )
    elif track:
        tracking.check_new_run_experiment(cfg)
    manifest = load_manifest(cfg.data.dir)
    if manifest.count(split) == 0:
        raise DataError(f"split {split!r} of {cfg.data.dir}: has no clips (see data.split)")
    if e.protocol == "rollout":
        check_lengths("rollout", e.context_frames, e.predict_frames, manifest.clip_shape[0])
    models.check_compatible(model, manifest.frame_shape)
    # the inputs the model is called on: a rollout's (the family's), or one step's T - 1 frames
    if e.protocol == "rollout":
        models.check_context(model, e.context_frames, "evaluate.context_frames")
        shape = models.rollout_batch_shape(
            model, e.batch_size, e.context_frames, e.predict_frames, manifest.frame_shape
        )
    else:
        shape = (e.batch_size, manifest.clip_shape[0] - 1, *manifest.frame_shape)
    choices = devices.for_inference(cfg.train, model, shape)

    dataset = clip_batches(cfg.data, manifest, split, e.batch_size, max_clips=e.max_clips)
    with naming_bad_shards(cfg.data, manifest, split):
        result = interruptible.call(
            evaluate_model, model, dataset, protocol=e.protocol, context_frames=e.context_frames, predict_frames=e.predict_frames,
            jit_compile=choices.jit_compile,
        )  # fmt: skip
    summary = {"protocol": e.protocol, "split": split, "clips": result["clips"], **flat_metrics(result, split)}
    report = {
        "summary": summary,
        "model_uri": model_uri,
        "model_source": model_source,
        "model_run_id": model_run,
        "data_dir": cfg.data.dir,
        "data_id": manifest.id,
        "split": split,
        **result,
    }
    with tempfile.TemporaryDirectory(prefix="nfp-eval-") as tmp:
        files = _write_report(report, Path(tmp))
        if track:
            report["mlflow_run_id"] = _log_to_mlflow(cfg, report, files, run_id=log_into, model_run=model_run)
            _write_json(report, files["report"])  # now with the run it was logged to
        storage.publish(Path(tmp), out_dir)
    report["files"] = {name: storage.join(out_dir, path.name) for name, path in files.items()}
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
            ax.plot(
                xs, curves[metric], marker="o", markersize=3, label=name, linestyle="-" if name == "model" else "--"
            )
        ax.set(title=metric.upper(), xlabel=xlabel)
    fig.axes[0].legend()
    fig.suptitle(f"{report['split']} split, {report['protocol']}, {report['clips']} clips")
    fig.tight_layout()
    return fig


def _log_to_mlflow(cfg, report: dict, files: dict[str, Path], *, run_id: str | None, model_run: str | None) -> str:
    """Log metrics (scalars + per-frame curves as steps), tags and files into run_id, or a new run; → its id."""
    import time

    import mlflow
    from mlflow.entities import Metric

    from nfp.inference.model_source import logged_model_id

    client = mlflow.MlflowClient()
    split = report["split"]
    target, created = run_id, run_id is None
    if created:
        experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
        experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(cfg.tracking.experiment)
        target = client.create_run(experiment_id, run_name=f"evaluate-{split}").info.run_id
    now = int(time.time() * 1000)
    scalars = {k: v for k, v in report["summary"].items() if k.startswith(f"{split}_")}
    # the scores onto the LoggedModel scored too, so mlflow.search_logged_models(order_by=…) ranks a project's models
    model_id = logged_model_id(report.get("model_source") or "")
    metrics = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in scalars.items() if _loggable(v)]
    for name, curves in report["per_frame"].items():  # stepped: the UI plots metric vs. step (= horizon)
        stem = split if name == "model" else f"{split}_baseline_{name}"
        for metric, values in curves.items():
            metrics += [
                Metric(f"{stem}_{metric}_by_frame", float(v), now, i + 1) for i, v in enumerate(values) if _loggable(v)
            ]
    client.log_batch(target, metrics=metrics)  # MlflowClient splits it into batches within the server's limits
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
