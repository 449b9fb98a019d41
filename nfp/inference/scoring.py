"""Scoring a model on clips: a protocol (rollout or one_step) run next to the baselines, OpenSTL's metrics for each.

Protocols:
- rollout: the first `context_frames` frames in, the next `predict_frames` predicted
  autoregressively — each prediction is appended to the input for the next step, so nothing
  after the context is ever seen (the benchmark protocol, 10 → 10 on Moving MNIST).
- one_step: the seed's shift protocol, teacher-forced: frames 0..T-2 in, each output t scored
  against true frame t+1 (what training's val_loss measures).
Baselines get exactly the inputs the model gets: copy-last repeats the last input frame,
mean-frame predicts the mean of the input frames (in one_step, of all frames seen so far).
"""

from __future__ import annotations

from nfp.errors import ConfigError, DataError

PROTOCOLS = ("rollout", "one_step")
PREDICTORS = ("model", "copy_last", "mean_frame")


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


def evaluate_model(
    model, clip_batches_ds, *, protocol: str, context_frames: int, predict_frames: int, jit_compile: bool = False
) -> dict:
    """Stream uint8 clips (batch, T, H, W) through a protocol; OpenSTL metrics for the model and both baselines.

    `jit_compile`: the model's calls XLA-compiled (nfp.distribute.devices chooses).
    Returns {"protocol", "context_frames", "predict_frames", "clips", "frames" (scored frame indices),
    "scores": {predictor: {metric: float}}, "per_frame": {predictor: {metric: [float per frame]}}}.
    """
    import tensorflow as tf

    from nfp import models
    from nfp.inference.metrics import FrameMetrics

    if protocol not in PROTOCOLS:
        raise ConfigError(f"evaluate.protocol: got {protocol!r}, expected one of {', '.join(PROTOCOLS)}")
    if protocol == "one_step" and models.of_model(model).KIND == "direct":
        raise ConfigError(
            "evaluate.protocol: got one_step, expected rollout for a direct model (it makes no one-step predictions)"
        )
    if protocol == "rollout":
        models.check_context(model, context_frames, "evaluate.context_frames")
    accumulators = {name: FrameMetrics() for name in PREDICTORS}
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True, jit_compile=jit_compile)
    length = None
    for clips in clip_batches_ds:
        x = to_frames(clips)
        if length is None:
            length = int(x.shape[1])
            check_lengths(protocol, context_frames, predict_frames, length)
            models.check_compatible(model, tuple(x.shape[2:]))
        if protocol == "rollout":
            inputs, truth = x[:, :context_frames], x[:, context_frames : context_frames + predict_frames]
            preds = {
                "model": models.rollout(model, inputs, predict_frames, jit_compile=jit_compile),
                **baselines(inputs, predict_frames),
            }
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


def check_lengths(protocol: str, context: int, predict: int, length: int) -> None:
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
