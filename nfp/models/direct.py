"""What every direct family shares (k context frames in, n frames out at once): the model's k, and its rollout."""

from __future__ import annotations

import numpy as np

from nfp.errors import ModelError


def context_length(model) -> int:
    """The k frames the model takes (fixed: its input's time axis)."""
    return int(model.inputs[0].shape[1])


def rollout(model, context, horizon: int, *, jit_compile: bool = False) -> np.ndarray:
    """(batch, ≥k, H, W, C) context → (batch, horizon, H, W, C): the last k frames predict the next block of n,
    whose last k frames (with context where n < k) predict the next, until `horizon` frames are made."""
    from nfp.models.traced import traced

    context = np.asarray(context, np.float32)
    k = context_length(model)
    if context.shape[1] < k:
        raise ModelError(f"context: got {context.shape[1]} frames, the model predicts from its last {k} (model input)")
    forward = traced(model, "direct", jit_compile, lambda: lambda frames: model(frames, training=False))
    frames, blocks, made = context[:, -k:], [], 0
    while made < horizon:
        block = np.asarray(forward(frames), np.float32)
        blocks.append(block)
        made += block.shape[1]
        frames = np.concatenate([frames, block], axis=1)[:, -k:]
    return np.concatenate(blocks, axis=1)[:, :horizon]


def rollout_input_frames(model, context_frames: int, horizon: int) -> int:
    """The frames a rollout calls the model on: its k, whatever the horizon."""
    return context_length(model)
