"""The PredRNN family (autoregressive): PredRNN-V2 (OpenSTL's PredRNNv2), ST-LSTM layers whose spatiotemporal memory
zigzags through the layers, trained with its decoupling loss and its reverse scheduled sampling; output t predicts
frame t+1, a rollout feeds its predictions back (one pass). Presets, keys, checks and the seam's functions
(nfp.models); the layer is in `layers.py`, imported when a model is built or loaded; sizes and cost in `cost.py`."""

from __future__ import annotations

import numpy as np

from nfp.errors import ConfigError

# why train.scheduled_sampling is refused
WITHOUT_SCHEDULED_SAMPLING = "PredRNN-V2 trains with its own reverse scheduled sampling: model.reverse_sampling"
KIND = "autoregressive"
KEYS = ("filters", "kernel_sizes", "patch_size", "output_activation", "decouple_beta", "reverse_sampling",
        "reverse_sampling_alpha")  # fmt: skip
WEIGHT_KEYS = KEYS[:3]
DEFAULT_PRESET = "predrnn_v2_tiny"
PRESETS: dict[str, dict] = {
    # OpenSTL's Moving MNIST model (configs/mmnist/PredRNNv2.py): 4 × 128 hidden, 5×5, patch 4, β 0.1, reverse
    # sampling from 25,000 to 50,000 steps (α 5,000); 23.9M parameters at 64×64×1
    "predrnn_v2": dict(
        filters=[128, 128, 128, 128],
        kernel_sizes=[5, 5, 5, 5],
        patch_size=4,
        output_activation="linear",
        decouple_beta=0.1,
        reverse_sampling=[25000, 50000],
        reverse_sampling_alpha=5000.0,
    ),
    # CPU-sized: 2 × 32 hidden, 3×3; the sampling schedule over the ~2,000 steps a CPU run of minutes takes
    "predrnn_v2_tiny": dict(
        filters=[32, 32],
        kernel_sizes=[3, 3],
        patch_size=4,
        output_activation="linear",
        decouple_beta=0.1,
        reverse_sampling=[500, 1500],
        reverse_sampling_alpha=250.0,
    ),
}
# OpenSTL's recipe (configs/mmnist/PredRNNv2.py and its parser's defaults): Adam, lr 5e-4, batch 16, OneCycle, MSE
RECIPES: dict[str, dict] = {
    "predrnn_v2": {"learning_rate": 5e-4, "batch_size": 16, "optimizer": "adam", "schedule": {"name": "onecycle"}},
    "predrnn_v2_tiny": {"learning_rate": 2e-3, "batch_size": 16, "optimizer": "adam", "schedule": {"name": "onecycle"}},
}
LOSS_TERMS = ()  # the decoupling loss is the layer's own (add_loss), reported as the `decoupling` metric


def describe(m) -> str:
    return (
        f"{len(m.filters)} × {m.filters[0]} ST-LSTM, {m.kernel_sizes[0]}², patch {m.patch_size}, β {m.decouple_beta:g}"
    )


def check(model_cfg, data_cfg) -> None:
    m = model_cfg
    if not m.filters or len(set(m.filters)) != 1:
        raise ConfigError(f"model.filters: got {m.filters}, expected one hidden size for every layer (the memory M "
                          "passes from layer to layer)")  # fmt: skip
    if len(m.kernel_sizes) != len(m.filters):
        raise ConfigError(f"model.kernel_sizes: got {len(m.kernel_sizes)} sizes for {len(m.filters)} layers, "
                          "expected one per layer")  # fmt: skip
    if any(side % m.patch_size for side in data_cfg.frame_hw):
        key, sides = data_cfg.frame_hw_key
        raise ConfigError(f"model.patch_size: got {m.patch_size}, expected a divisor of {key} ({sides})")
    start, end = (list(m.reverse_sampling) + [None, None])[:2]
    if len(m.reverse_sampling) != 2 or not 0 <= start < end:
        raise ConfigError(f"model.reverse_sampling: got {m.reverse_sampling}, expected [start, end] training steps, "
                          "0 <= start < end (OpenSTL: [25000, 50000])")  # fmt: skip


def build(model_cfg, *, frame_shape, context_frames, predict_frames, scheduled_sampling, sampling_from, xla_cell):
    """Uncompiled model: (batch, time, H, W, C) → (batch, time, H, W, C), whatever the clips' length; its reverse
    scheduled sampling tells context steps from predicted ones at `sampling_from` (evaluate.context_frames)."""
    from nfp.models.predrnn.layers import build_model

    return build_model(model_cfg, frame_shape=frame_shape, context_frames=sampling_from)


def rollout(model, context, horizon: int, *, jit_compile: bool = False) -> np.ndarray:
    """(batch, k, H, W, C) context → (batch, horizon, H, W, C): one pass, fed its own predictions from step k on."""
    from nfp.models.predrnn.layers import free_run
    from nfp.models.traced import traced

    context = np.asarray(context, np.float32)
    k = context.shape[1]
    frames = np.zeros((context.shape[0], k + horizon - 1, *context.shape[2:]), np.float32)
    frames[:, :k] = context
    run = traced(model, "free_run", jit_compile, lambda: lambda frames, k: free_run(model, frames, k))
    return np.asarray(run(frames, k), np.float32)[:, k - 1 :]


def rollout_input_frames(model, context_frames: int, horizon: int) -> int:
    """The frames a rollout calls the model on: the context and every prediction but the last."""
    return context_frames + horizon - 1


def flops_per_clip(model_cfg, *, frame_shape, input_frames: int, output_frames: int) -> dict:
    from nfp.models.predrnn.cost import flops_per_clip

    return flops_per_clip(model_cfg, frame_shape=tuple(frame_shape), frames=input_frames)


def step_memory(model_cfg, *, frame_shape, input_frames: int, output_frames: int, value_bytes: int):
    """None: not estimated (a convolution's activations grow only linearly with the frame; nfp doctor measures it)."""
    return None


def loss_terms(model_cfg) -> dict[str, float]:
    """None through train.loss's terms: the decoupling loss is added by the layer itself."""
    return {}


def loss_term(name: str):
    raise KeyError(f"loss term {name!r}: PredRNN has none (its decoupling loss is the layer's own)")


def replicated_xla(model_cfg) -> tuple[str | None, str]:
    """None: Keras cannot compile a replicated step (keras-team/keras#19005); one replica compiles the whole step."""
    return None, f"model.family: {model_cfg.family}"


def register_layers() -> None:
    import nfp.models.predrnn.layers  # noqa: F401 - registers the layers for keras.saving.load_model
