"""The ConvLSTM family's models from `cfg.model`: (batch, time, H, W, C) frames → (batch, time, H, W, C) float32 predictions.

Output t predicts frame t+1 and sees input frames 0..t only (causal in time), so a model can be
rolled out autoregressively. With `model.patch_size` p > 1 the frames are cut into p×p patches
(space-to-depth) before the recurrent stack and put back after. Two stacks (`model.cell`):
- nfp: nfp.models.convlstm.layers.ConvLSTMStack — OpenSTL's ConvLSTM cell, float32 cell state under mixed
  precision, a 1×1 head per step, scheduled sampling in training;
- keras: keras.layers.ConvLSTM2D layers (normalisation between them) and a Conv3D head whose
  temporal padding is on the past side only (keras-io#1003: the reference's `same`-padded Conv3D
  sees frame t+1 when predicting it).
Importable without TensorFlow (Keras is imported when a model is built), so the GPU probe can
run these models under Keras 3 on JAX.
"""

from __future__ import annotations

import numpy as np

from nfp.models.traced import traced

HEAD_KERNEL = (3, 3, 3)  # keras cell: (time, H, W), the keras-io head's shape, so its parameter count matches


def build_model(
    model_cfg,
    *,
    frame_shape: tuple[int, int, int] | None = None,
    image_size: int | None = None,
    scheduled_sampling: int = 0,
    context_frames: int = 10,
    xla_cell: bool = False,
):
    """Uncompiled model for `model_cfg` on frames of `frame_shape` (H, W, C), or `image_size`² grey frames (the
    shorthand, as data.image_size); `scheduled_sampling` steps after `context_frames`
    (nfp cell only, see layers.ConvLSTMStack); `xla_cell`: the nfp cell's steps as one XLA function (TensorFlow;
    nfp.distribute.devices decides when: replicated training, where Keras cannot compile the whole step)."""
    import keras

    from nfp.errors import ConfigError
    from nfp.models.convlstm import layers as nfp_layers

    p = model_cfg.patch_size
    h, w, c = _frame_shape(frame_shape, image_size)
    if h % p or w % p:
        raise ConfigError(f"model.patch_size: got {p}, expected a divisor of the frame's height and width ({h}×{w})")
    inputs = keras.Input(shape=(None, h, w, c), name="frames")
    x = nfp_layers.SpaceToDepth(p, name="to_patches")(inputs) if p > 1 else inputs
    if model_cfg.cell == "nfp":
        x = nfp_layers.ConvLSTMStack(
            model_cfg.filters, model_cfg.kernel_sizes, activation=model_cfg.activation,
            output_activation=model_cfg.output_activation, sampling_steps=scheduled_sampling,
            context_frames=context_frames, jit_compile=xla_cell, name="convlstm",
        )(x)  # fmt: skip
    else:
        x = _keras_stack(model_cfg, x, channels=p * p * c)
    # float32 so mixed precision still yields float32 frames and loss
    outputs = nfp_layers.DepthToSpace(p, dtype="float32", name="next_frame")(x) if p > 1 else x
    return keras.Model(inputs, outputs, name=f"convlstm_{model_cfg.preset}")


def _frame_shape(frame_shape, image_size) -> tuple[int, int, int]:
    if (frame_shape is None) == (image_size is None):
        raise TypeError("give frame_shape=(H, W, C) or image_size=<side of square grey frames>, one of them")
    return tuple(frame_shape) if frame_shape is not None else (image_size, image_size, 1)


def _keras_stack(model_cfg, x, *, channels: int):
    """ConvLSTM2D layers, normalisation and dropout between them, and the causal Conv3D head."""
    from keras import layers

    normalization = {"batch": layers.BatchNormalization, "layer": layers.LayerNormalization}.get(model_cfg.norm)
    filters = model_cfg.filters
    for i, (f, k) in enumerate(zip(filters, model_cfg.kernel_sizes)):
        x = layers.ConvLSTM2D(
            f, k, padding="same", activation=model_cfg.activation, return_sequences=True, name=f"convlstm_{i}"
        )(x)
        if normalization and i < len(filters) - 1:  # between recurrent layers only, as in the keras-io reference
            x = normalization(name=f"norm_{i}")(x)
        if model_cfg.dropout > 0:
            x = layers.Dropout(model_cfg.dropout, name=f"dropout_{i}")(x)
    kt, kh, kw = HEAD_KERNEL
    # Pad (kt-1) frames before and none after: output t sees hidden states t-kt+1..t only.
    # (On CPU, TF's oneDNN remapper logs "remapper failed … causal_pad/Pad" once per trace: it cannot
    # fuse this Pad into the Conv3D gradient and leaves the graph unfused. Results are unchanged.)
    x = layers.ZeroPadding3D(((kt - 1, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)), name="causal_pad")(x)
    x = layers.Conv3D(channels, HEAD_KERNEL, padding="valid", name="head")(x)
    return layers.Activation(model_cfg.output_activation, dtype="float32", name="prediction")(x)


def rollout(model, context, horizon: int, *, jit_compile: bool = False) -> np.ndarray:
    """Feed (batch, k, H, W, C) context frames, then the model's own predictions: → (batch, horizon, H, W, C).

    An nfp-cell model feeds its predictions back itself: one pass. Any other model runs once per predicted frame,
    always on the same k + horizon - 1 frames, those not predicted yet zero: a causal model's output at t ignores
    them. Either way one traced function per model, input shape and k (TensorFlow: a tf.function, XLA-compiled
    when `jit_compile`, as nfp.distribute.devices chooses for the machine; XLA compiles once per shape)."""
    context = np.asarray(context, np.float32)
    k = context.shape[1]
    frames = np.zeros((context.shape[0], k + horizon - 1, *context.shape[2:]), np.float32)
    frames[:, :k] = context
    if _nfp_stack(model) is not None:
        return np.asarray(_compiled(model, "free_run", jit_compile)(frames, k), np.float32)[:, k - 1 :]
    forward = _compiled(model, "forward", jit_compile)
    preds = []
    for i in range(horizon):
        nxt = np.asarray(forward(frames, k), np.float32)[:, k - 1 + i]
        preds.append(nxt)
        if k + i < frames.shape[1]:
            frames[:, k + i] = nxt
    return np.stack(preds, axis=1)


def free_run(model, frames, free_run_after: int):
    """An nfp-cell model's output when, from step `free_run_after` on, its inputs are its own predictions."""
    x, stack = frames, _nfp_stack(model)
    for layer in model.layers[1:]:  # to_patches, convlstm, next_frame: a chain (build_model)
        x = layer(x, free_run_after=free_run_after) if layer is stack else layer(x)
    return x


def _compiled(model, kind: str, jit_compile: bool):
    """model(frames) or free_run(model, frames, k) as a function of (frames, k), traced once (nfp.models.traced)."""
    if kind == "free_run":
        return traced(model, kind, jit_compile, lambda: lambda frames, k: free_run(model, frames, k))
    return traced(model, kind, jit_compile, lambda: lambda frames, k: model(frames, training=False))


def flops_per_clip(model_cfg, *, frames: int, frame_shape=None, image_size: int | None = None) -> dict:
    """{"forward", "train" (FLOPs per clip of `frames` frames), "params" (implied count)} for a model config.

    Counted from the layer shapes, per frame on the grid the stack works on, a multiply-add as 2 FLOPs: each
    ConvLSTM layer's gates are one k×k conv of the input (C → 4F) and one of the state (F → 4F), 2·hw·k²·(C+F)·4F,
    plus ≈ 13·F·hw elementwise; BatchNorm 2·F·hw, LayerNorm ≈ 8·F·hw; the head 2·hw·(its kernel)·F. A training
    step ≈ 3× forward (the backward pass costs about twice the forward). bench/scaling.py checks the implied
    parameter count against Keras's count_params()."""
    p = model_cfg.patch_size
    h, w, c = _frame_shape(frame_shape, image_size)
    hw = (h // p) * (w // p)  # positions of the grid the recurrent stack works on
    per_frame, params, channels = 0, 0, p * p * c
    for i, (f, k) in enumerate(zip(model_cfg.filters, model_cfg.kernel_sizes)):
        per_frame += 2 * hw * k * k * (channels + f) * 4 * f + 13 * f * hw  # gate convolutions + elementwise
        params += k * k * (channels + f) * 4 * f + 4 * f
        channels = f
        if model_cfg.cell == "nfp" or i == len(model_cfg.filters) - 1:  # keras: norm between recurrent layers only
            continue
        if model_cfg.norm == "batch":
            per_frame += 2 * f * hw
            params += 4 * f  # gamma, beta, moving mean, moving variance
        elif model_cfg.norm == "layer":
            per_frame += 8 * f * hw
            params += 2 * f
    head = channels * p * p * c * (1 if model_cfg.cell == "nfp" else HEAD_KERNEL[0] * HEAD_KERNEL[1] * HEAD_KERNEL[2])
    per_frame += 2 * hw * head + 2 * hw * p * p * c
    params += head + p * p * c + (1 if model_cfg.cell == "nfp" else 0)  # head bias; the nfp stack's step counter
    forward = frames * per_frame
    return {"forward": forward, "train": 3 * forward, "params": params}


def _nfp_stack(model):
    """The model's ConvLSTMStack, if it is an nfp-cell model (not a stand-in callable)."""
    from nfp.models.convlstm.layers import ConvLSTMStack

    return next((layer for layer in getattr(model, "layers", ()) if isinstance(layer, ConvLSTMStack)), None)
