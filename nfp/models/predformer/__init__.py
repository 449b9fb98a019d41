"""The PredFormer family (direct): k context frames in, k out at once, no recurrence and no convolution (PredFormer,
arXiv 2410.04733: its Quadruplet-TSST model). Frames become p×p patches, embedded as tokens; `blocks` blocks of four
gated transformers attend over time, space, space, time in turn. Presets, keys, checks and the seam's functions
(nfp.models); the layers are in `layers.py`, imported when a model is built or loaded; sizes and cost in `cost.py`."""

from __future__ import annotations

from nfp.errors import ConfigError
from nfp.models.direct import context_length, rollout, rollout_input_frames  # noqa: F401 - the seam's, shared

# why train.scheduled_sampling is refused
WITHOUT_SCHEDULED_SAMPLING = "a direct model feeds no predictions back in training"
KIND = "direct"
KEYS = ("patch_size", "width", "heads", "blocks", "mlp_ratio", "drop_path", "output_activation")
WEIGHT_KEYS = KEYS[:5]  # what its weights are shaped by (resuming)
DEFAULT_PRESET = "predformer_tiny"
PRESETS: dict[str, dict] = {
    # PredFormer's Moving MNIST model (configs/mmnist/PredFormer.py): 25.3M parameters at 64×64×1
    "predformer": dict(
        patch_size=8, width=256, heads=8, blocks=6, mlp_ratio=4.0, drop_path=0.0, output_activation="linear"
    ),
    # CPU-sized: 4×4 patches (64 per 32×32 frame), width 64, two blocks
    "predformer_tiny": dict(
        patch_size=4, width=64, heads=4, blocks=2, mlp_ratio=4.0, drop_path=0.0, output_activation="linear"
    ),
}
# PredFormer's recipe (scripts/mmnist/mm_PredFormer_TSST_train.sh): AdamW, lr 1e-3, weight decay 1e-2, batch 16,
# OneCycle per step, MSE
_RECIPE = {
    "learning_rate": 1e-3, "weight_decay": 1e-2, "batch_size": 16, "optimizer": "adamw", "schedule": {"name": "onecycle"},
}  # fmt: skip
RECIPES: dict[str, dict] = {"predformer": _RECIPE, "predformer_tiny": _RECIPE}
LOSS_TERMS = ()


def describe(m) -> str:
    return f"{m.blocks} TSST blocks of width {m.width}, {m.heads} heads, patch {m.patch_size}"


def check(model_cfg, data_cfg) -> None:
    if model_cfg.width % model_cfg.heads:
        raise ConfigError(f"model.width: got {model_cfg.width}, expected a multiple of model.heads ({model_cfg.heads})")
    p = model_cfg.patch_size
    if any(side % p for side in data_cfg.frame_hw):
        key, sides = data_cfg.frame_hw_key
        raise ConfigError(
            f"model.patch_size: got {p}, expected a size that divides the frames' sides ({key} is {sides})"
        )
    if model_cfg.mlp_ratio * model_cfg.width < 1:
        raise ConfigError(
            f"model.mlp_ratio: got {model_cfg.mlp_ratio:g}, expected > 0 (the SwiGLU's width / model.width)"
        )


def build(model_cfg, *, frame_shape, context_frames, predict_frames, scheduled_sampling, sampling_from, xla_cell):
    """Uncompiled model: (batch, context_frames, H, W, C) → (batch, predict_frames, H, W, C) float32."""
    from nfp.models.predformer.layers import build_model

    return build_model(
        model_cfg, frame_shape=tuple(frame_shape), context_frames=context_frames, predict_frames=predict_frames
    )


def flops_per_clip(model_cfg, *, frame_shape, input_frames: int, output_frames: int) -> dict:
    from nfp.models.predformer.cost import flops_per_clip

    return flops_per_clip(
        model_cfg, frame_shape=tuple(frame_shape), context_frames=input_frames, predict_frames=output_frames
    )


def step_memory(model_cfg, *, frame_shape, input_frames: int, output_frames: int, value_bytes: int):
    """(bytes per clip in a training step, parameters, what shrinks it): the spatial attention's share grows with
    the square of the patches per frame, so with 1/p⁴."""
    from nfp.models.predformer.cost import flops_per_clip, train_bytes_per_clip

    frame_shape = tuple(frame_shape)
    per_clip = train_bytes_per_clip(
        model_cfg, frame_shape=frame_shape, context_frames=input_frames, predict_frames=output_frames,
        value_bytes=value_bytes,
    )  # fmt: skip
    params = flops_per_clip(model_cfg, frame_shape=frame_shape, context_frames=input_frames, predict_frames=1)["params"]
    return (
        per_clip,
        params,
        f"raise model.patch_size (now {model_cfg.patch_size}: a clip's attention shrinks with its 4th power)",
    )


def loss_terms(model_cfg) -> dict[str, float]:
    """None: PredFormer trains with MSE alone."""
    return {}


def loss_term(name: str):
    raise KeyError(f"loss term {name!r}: PredFormer has none")


def replicated_xla(model_cfg) -> tuple[str | None, str]:
    """None: Keras cannot compile a replicated step (keras-team/keras#19005) and the model has no cell of its own
    to compile; one replica compiles the whole step."""
    return None, f"model.family: {model_cfg.family}"


def register_layers() -> None:
    import nfp.models.predformer.layers  # noqa: F401 - registers the layers for keras.saving.load_model
