"""ConvLSTM2D next-frame models, built from `cfg.model` by preset name.

Input and output are (batch, time, H, W, 1) float32 in [0, 1]; output t predicts frame t+1.
The head is causal in time: a Conv3D with temporal kernel 3 whose padding is on the past side
only (keras-io#1003: the reference's `same`-padded Conv3D sees frame t+1 when predicting it).
"""

from __future__ import annotations

import numpy as np

# name → (filters, kernel sizes, activation, norm); dropout and output_activation always come from cfg.model.
PRESETS = {
    "tiny": ([16, 16], [3, 3], "tanh", "batch"),  # CPU quickstart and tests
    "keras_io": ([64, 64, 64], [5, 3, 1], "relu", "batch"),  # the keras-io reference: 746,689 params
    "large": ([128, 128, 128, 128], [5, 5, 3, 3], "tanh", "layer"),  # ≈7.3M params, for GPUs
}
HEAD_KERNEL = (3, 3, 3)  # (time, H, W), same shape as the keras-io head so parameter counts match


def layer_spec(model_cfg) -> tuple[list[int], list[int], str, str]:
    """(filters, kernel_sizes, activation, norm) for the configured preset or custom stack."""
    if model_cfg.preset == "custom":
        return list(model_cfg.filters), list(model_cfg.kernel_sizes), model_cfg.activation, model_cfg.norm
    return PRESETS[model_cfg.preset]


def build_model(model_cfg, *, image_size: int):
    """Uncompiled ConvLSTM2D stack: (batch, time, H, W, 1) → (batch, time, H, W, 1), causal in time."""
    import keras
    from keras import layers

    filters, kernel_sizes, activation, norm = layer_spec(model_cfg)
    inputs = keras.Input(shape=(None, image_size, image_size, 1), name="frames")
    x = inputs
    normalization = {"batch": layers.BatchNormalization, "layer": layers.LayerNormalization}.get(norm)
    for i, (f, k) in enumerate(zip(filters, kernel_sizes)):
        x = layers.ConvLSTM2D(f, k, padding="same", activation=activation, return_sequences=True, name=f"convlstm_{i}")(
            x
        )
        if normalization and i < len(filters) - 1:  # between recurrent layers only, as in the keras-io reference
            x = normalization(name=f"norm_{i}")(x)
        if model_cfg.dropout > 0:
            x = layers.Dropout(model_cfg.dropout, name=f"dropout_{i}")(x)
    kt, kh, kw = HEAD_KERNEL
    # Pad (kt-1) frames before and none after: output t sees hidden states t-kt+1..t only.
    # (On CPU, TF's oneDNN remapper logs "remapper failed … causal_pad/Pad" once per trace: it cannot
    # fuse this Pad into the Conv3D gradient and leaves the graph unfused. Results are unchanged.)
    x = layers.ZeroPadding3D(((kt - 1, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)), name="causal_pad")(x)
    x = layers.Conv3D(1, HEAD_KERNEL, padding="valid", name="head")(x)
    # float32 activation so mixed precision still yields float32 probabilities and loss.
    outputs = layers.Activation(model_cfg.output_activation, dtype="float32", name="next_frame")(x)
    return keras.Model(inputs, outputs, name=f"convlstm_{model_cfg.preset}")


def rollout(model, context, horizon: int) -> np.ndarray:
    """Feed (batch, k, H, W, 1) context frames, then the model's own predictions: → (batch, horizon, H, W, 1)."""
    frames = np.asarray(context, np.float32)
    preds = []
    for _ in range(horizon):
        nxt = np.asarray(model(frames, training=False))[:, -1:]
        preds.append(nxt)
        frames = np.concatenate([frames, nxt], axis=1)
    return np.concatenate(preds, axis=1)


def check_compatible(model, frame_shape) -> None:
    """ModelError unless the model takes (batch, time, H, W, C) clips with frame_shape = (H, W, C)."""
    from nfp.errors import ModelError

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
