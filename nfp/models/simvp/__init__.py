"""The SimVP family (direct): k context frames in, the next n out at once, no recurrence (OpenSTL's SimVP_Model:
encoder → translator over the k frames stacked as channels → decoder). Translators `gsta` (SimVP v2's gated
spatiotemporal attention) and `tau` (TAU, trained with its differential divergence regularisation). Presets, keys,
checks and the seam's functions (nfp.models); the layers are in `layers.py`, imported when a model is built or
loaded."""

from __future__ import annotations

from nfp.errors import ConfigError
from nfp.models.direct import context_length, rollout, rollout_input_frames  # noqa: F401 - the seam's, shared

# why train.scheduled_sampling is refused
WITHOUT_SCHEDULED_SAMPLING = "a direct model feeds no predictions back in training"
KIND = "direct"
KEYS = (
    "translator", "spatial_channels", "temporal_channels", "encoder_blocks", "translator_blocks", "encoder_kernel",
    "decoder_kernel", "mlp_ratio", "drop_path", "output_activation",
)  # fmt: skip
WEIGHT_KEYS = KEYS[:7]
DEFAULT_PRESET = "simvp_tiny"
# OpenSTL's Moving MNIST sizes (configs/mmnist/simvp/SimVP_gSTA.py, configs/mmnist/TAU.py)
_OPENSTL_MMNIST = dict(
    spatial_channels=64, temporal_channels=512, encoder_blocks=4, translator_blocks=8, encoder_kernel=3,
    decoder_kernel=3, mlp_ratio=8.0, drop_path=0.0, output_activation="linear",
)  # fmt: skip
# CPU-sized: one stride-2 stage, a narrow translator (BENCHMARKS.md section 5 measures them against `tiny`)
_TINY = dict(
    spatial_channels=16, temporal_channels=64, encoder_blocks=2, translator_blocks=2, encoder_kernel=3,
    decoder_kernel=3, mlp_ratio=4.0, drop_path=0.0, output_activation="linear",
)  # fmt: skip
PRESETS: dict[str, dict] = {
    "simvp_gsta": dict(translator="gsta", **_OPENSTL_MMNIST),
    "tau": dict(translator="tau", **_OPENSTL_MMNIST),
    "simvp_tiny": dict(translator="gsta", **_TINY),
    "tau_tiny": dict(translator="tau", **_TINY),
}
# OpenSTL's recipe for these models (lr 1e-3, batch 16, Adam, OneCycle per step): train keys the config may set
_RECIPE = {"learning_rate": 1e-3, "batch_size": 16, "optimizer": "adam", "schedule": {"name": "onecycle"}}
# The CPU presets peak at 3e-3: on the CPU benchmark's clips (BENCHMARKS.md section 5) tau_tiny reached MSE 27.0,
# 20.0 and 20.3 after 150 s at 1e-3, 3e-3 and 1e-2 (and 20.9 at a constant 3e-3)
_CPU_RECIPE = {**_RECIPE, "learning_rate": 3e-3}
RECIPES: dict[str, dict] = {
    "simvp_gsta": _RECIPE, "tau": _RECIPE, "simvp_tiny": _CPU_RECIPE, "tau_tiny": _CPU_RECIPE,
}  # fmt: skip
LOSS_TERMS = ("differential_divergence",)
TAU_ALPHA = 0.1  # weight of TAU's differential divergence regularisation (configs/mmnist/TAU.py alpha)


def stride_factor(model_cfg) -> int:
    """How much the encoder shrinks H and W: 2 per stride-2 block, every second one."""
    return 2 ** (model_cfg.encoder_blocks // 2)


def describe(m) -> str:
    return f"{m.translator}, {m.spatial_channels}/{m.temporal_channels} channels, {m.encoder_blocks}+{m.translator_blocks} blocks"


def check(model_cfg, data_cfg) -> None:
    if model_cfg.encoder_blocks % 2:
        raise ConfigError(
            f"model.encoder_blocks: got {model_cfg.encoder_blocks}, expected an even number (blocks come in pairs, "
            "the second of each pair stride 2)"
        )
    for key in ("encoder_kernel", "decoder_kernel"):
        if not getattr(model_cfg, key) % 2:
            raise ConfigError(f"model.{key}: got {getattr(model_cfg, key)}, expected an odd size (padded to keep H×W)")
    if model_cfg.mlp_ratio <= 1:
        raise ConfigError(f"model.mlp_ratio: got {model_cfg.mlp_ratio:g}, expected > 1 (OpenSTL's MidMetaNet widens)")
    factor = stride_factor(model_cfg)
    if any(side % factor for side in data_cfg.frame_hw):
        key, sides = data_cfg.frame_hw_key
        raise ConfigError(
            f"model.encoder_blocks: got {model_cfg.encoder_blocks} ({model_cfg.encoder_blocks // 2} stride-2 blocks), "
            f"expected frames whose height and width divide by {factor} ({key} is {sides})"
        )


def build(model_cfg, *, frame_shape, context_frames, predict_frames, scheduled_sampling, sampling_from, xla_cell):
    """Uncompiled model: (batch, context_frames, H, W, C) → (batch, predict_frames, H, W, C) float32."""
    from nfp.models.simvp.layers import build_model

    return build_model(
        model_cfg, frame_shape=tuple(frame_shape), context_frames=context_frames, predict_frames=predict_frames
    )


def flops_per_clip(model_cfg, *, frame_shape, input_frames: int, output_frames: int) -> dict:
    from nfp.models.simvp.cost import flops_per_clip

    return flops_per_clip(
        model_cfg, frame_shape=tuple(frame_shape), context_frames=input_frames, predict_frames=output_frames
    )


def step_memory(model_cfg, *, frame_shape, input_frames: int, output_frames: int, value_bytes: int):
    """None: not estimated (a convolution's activations grow only linearly with the frame; nfp doctor measures it)."""
    return None


def loss_terms(model_cfg) -> dict[str, float]:
    """TAU trains with its differential divergence regularisation (α 0.1) beside the MSE; gSTA with MSE alone."""
    return {"differential_divergence": TAU_ALPHA} if model_cfg.translator == "tau" else {}


def loss_term(name: str):
    """A loss term's function: (y_true, y_pred) → (batch,)."""
    from nfp.models.simvp.layers import differential_divergence

    return {"differential_divergence": differential_divergence}[name]


def replicated_xla(model_cfg) -> tuple[str | None, str]:
    """None: Keras cannot compile a replicated step (keras-team/keras#19005) and the model has no cell of its own
    to compile; one replica compiles the whole step."""
    return None, f"model.family: {model_cfg.family}"


def register_layers() -> None:
    import nfp.models.simvp.layers  # noqa: F401 - registers the layers for keras.saving.load_model
