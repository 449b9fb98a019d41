"""The ConvLSTM family (autoregressive): output t predicts frame t+1 from frames 0..t; a rollout feeds predictions
back. Its presets, the model keys it reads, its checks, and the seam's functions (nfp.models); the model is in
`model.py`, its layers in `layers.py`, both imported only when a model is built or loaded."""

from __future__ import annotations

from nfp.errors import ConfigError

WITHOUT_SCHEDULED_SAMPLING = None  # train.scheduled_sampling: the nfp cell's (see config checks)
KIND = "autoregressive"
# The model keys this family reads (besides model.preset and model.family); any other set in a config is refused.
KEYS = ("cell", "filters", "kernel_sizes", "patch_size", "activation", "norm", "dropout", "output_activation")
WEIGHT_KEYS = ("cell", "filters", "kernel_sizes", "patch_size")  # what its weights are shaped by (resuming)
DEFAULT_PRESET = "tiny"
# A preset is a bundle of model keys: it fills every key the config does not set (keys you set win).
PRESETS: dict[str, dict] = {
    # CPU quickstart: the best measured per CPU-second at 32×32 (BENCHMARKS.md section 5): 4×4 patches, MSE
    "tiny": dict(
        cell="nfp",
        filters=[64, 64],
        kernel_sizes=[3, 3],
        activation="tanh",
        norm="none",
        patch_size=4,
        output_activation="linear",
    ),
    # the keras-io example's model (746,689 params): keras.layers.ConvLSTM2D + BatchNorm, full-size frames
    "keras_io": dict(
        cell="keras",
        filters=[64, 64, 64],
        kernel_sizes=[5, 3, 1],
        activation="relu",
        norm="batch",
        patch_size=1,
        output_activation="sigmoid",
    ),
    # OpenSTL's ConvLSTM-S (configs/mmnist/ConvLSTM.py): 4 × 128 hidden, 5×5, 4×4 patches, linear head (MSE)
    "convlstm_s": dict(
        cell="nfp",
        filters=[128, 128, 128, 128],
        kernel_sizes=[5, 5, 5, 5],
        activation="tanh",
        norm="none",
        patch_size=4,
        output_activation="linear",
    ),
}
RECIPES: dict[str, dict] = {}  # train keys a preset sets unless the config does: none (the train defaults are its)


def describe(m) -> str:
    return f"{m.cell}, {m.filters}×{m.kernel_sizes[0]}², patch {m.patch_size}"


def check(model_cfg, data_cfg) -> None:
    """The rules between this family's keys and the frames, one line each."""
    m = model_cfg
    if len(m.filters) != len(m.kernel_sizes):
        hint = f" (set both to change the depth of model.preset {m.preset})" if m.preset in PRESETS else ""
        raise ConfigError(
            f"model.kernel_sizes: got {len(m.kernel_sizes)} sizes for {len(m.filters)} filters, expected one per layer{hint}"
        )
    if not m.filters:
        raise ConfigError("model.filters: empty, expected at least one ConvLSTM layer")
    if any(side % m.patch_size for side in data_cfg.frame_hw):
        key, sides = data_cfg.frame_hw_key
        raise ConfigError(f"model.patch_size: got {m.patch_size}, expected a divisor of {key} ({sides})")
    if m.cell == "nfp" and m.norm != "none":
        raise ConfigError(
            f"model.norm: got {m.norm!r}, expected none with model.cell: nfp (normalisation is for the keras cell)"
        )
    if m.cell == "nfp" and m.dropout:
        raise ConfigError(
            f"model.dropout: got {m.dropout:g}, expected 0 with model.cell: nfp (dropout is for the keras cell)"
        )


def build(model_cfg, *, frame_shape, context_frames, predict_frames, scheduled_sampling, sampling_from, xla_cell):
    """Uncompiled model: (batch, time, H, W, C) → (batch, time, H, W, C), whatever the clips' length (the data's
    context_frames and predict_frames do not shape it)."""
    from nfp.models.convlstm.model import build_model

    return build_model(
        model_cfg, frame_shape=frame_shape, scheduled_sampling=scheduled_sampling, context_frames=sampling_from,
        xla_cell=xla_cell,
    )  # fmt: skip


def rollout(model, context, horizon: int, *, jit_compile: bool = False):
    from nfp.models.convlstm.model import rollout

    return rollout(model, context, horizon, jit_compile=jit_compile)


def rollout_input_frames(model, context_frames: int, horizon: int) -> int:
    """The frames a rollout calls the model on: the context and every prediction but the last."""
    return context_frames + horizon - 1


def flops_per_clip(model_cfg, *, frame_shape, input_frames: int, output_frames: int) -> dict:
    from nfp.models.convlstm.model import flops_per_clip

    return flops_per_clip(model_cfg, frames=input_frames, frame_shape=frame_shape)


LOSS_TERMS = ()


def step_memory(model_cfg, *, frame_shape, input_frames: int, output_frames: int, value_bytes: int):
    """None: not estimated (a convolution's activations grow only linearly with the frame; nfp doctor measures it)."""
    return None


def loss_terms(model_cfg) -> dict[str, float]:
    """{term name: weight} added to the base loss: none."""
    return {}


def replicated_xla(model_cfg) -> tuple[str | None, str]:
    """The XLA mode under a replicated strategy: the nfp cell compiles its own steps ("cell"); the keras cell none."""
    return ("cell" if model_cfg.cell == "nfp" else None), f"model.cell: {model_cfg.cell}"


def cell_xla_probe(model, batch_shape):
    """(function, args): the nfp cell's steps and their gradients for batches of `batch_shape`, to convert to XLA."""
    import numpy as np
    import tensorflow as tf

    from nfp.models.convlstm.layers import ConvLSTMStack

    stack = next(layer for layer in model.layers if isinstance(layer, ConvLSTMStack))
    _, _, *frame = stack.input.shape
    args = (
        np.zeros((*batch_shape[:2], *frame), np.float32),
        np.ones(batch_shape[:2], bool),
        [np.asarray(w.numpy()) for w in stack.step_weights],
    )

    def step(frames, truth, weights):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            value = tf.reduce_sum(stack._steps(frames, truth, weights, feedback=True))
        return value, tape.gradient(value, weights)

    return step, args


def register_layers() -> None:
    import nfp.models.convlstm.layers  # noqa: F401 - registers the layers for keras.saving.load_model
