"""The family seam: every model nfp trains belongs to a family, and everything outside nfp/models/ reaches a family
through the functions here, never by name.

A family (a sub-package: `convlstm`, `predrnn`, `simvp`, `predformer`) owns its presets and the model keys it reads, its checks, its layers,
`build`, its loss terms, its kind — autoregressive (output t predicts frame t+1; a rollout feeds predictions back)
or direct (k context frames in, n frames out at once; a rollout iterates blocks) —, its rollout, its FLOP count,
and the XLA mode it supports under a replicated strategy. Imports nothing heavy: Keras (and TensorFlow, where it is
the backend) load when a model is built or loaded, so config and the GPU probe import this without TensorFlow.
Model code imports nothing from training, tracking or data.
"""

from __future__ import annotations

from types import ModuleType

from nfp.models import convlstm, predformer, predrnn, simvp

FAMILIES: dict[str, ModuleType] = {"convlstm": convlstm, "simvp": simvp, "predformer": predformer, "predrnn": predrnn}
DEFAULT_FAMILY = "convlstm"
PRESETS: dict[str, str] = {preset: name for name, fam in FAMILIES.items() for preset in fam.PRESETS}  # → family


def family(name: str) -> ModuleType:
    """The family called `name` (model.family)."""
    return FAMILIES[name]


def of_config(model_cfg) -> ModuleType:
    return FAMILIES[model_cfg.family]


def of_model(model) -> ModuleType:
    """The family a built or loaded model belongs to, from its name (`<family>_<preset>`); a model of no family
    (a stand-in, another tool's) is treated as autoregressive, as nfp's first models were."""
    name = getattr(model, "name", "") or ""
    return next((fam for key, fam in FAMILIES.items() if name.startswith(f"{key}_")), FAMILIES[DEFAULT_FAMILY])


def preset_bundle(preset: str) -> tuple[str, dict, dict]:
    """(family name, model keys, train recipe) of a preset."""
    fam = FAMILIES[PRESETS[preset]]
    return PRESETS[preset], fam.PRESETS[preset], fam.RECIPES.get(preset, {})


def register_layers() -> None:
    """Import every family's layers, which registers them for `keras.saving.load_model`."""
    for fam in FAMILIES.values():
        fam.register_layers()


def build_model(model_cfg, *, frame_shape, context_frames: int = 10, predict_frames: int = 10,
                scheduled_sampling: int = 0, sampling_from: int = 10, xla_cell: bool = False):  # fmt: skip
    """Uncompiled model of `model_cfg`'s family for frames of `frame_shape` (H, W, C): an autoregressive model maps
    (batch, time, H, W, C) → the next frames, (batch, time, H, W, C); a direct one (batch, context_frames, H, W, C)
    → (batch, predict_frames, H, W, C). Float32 outputs under any precision policy. `scheduled_sampling` steps,
    from frame `sampling_from` on, and `xla_cell`: the convlstm family's nfp cell (see its layers)."""
    return of_config(model_cfg).build(
        model_cfg, frame_shape=tuple(frame_shape), context_frames=context_frames, predict_frames=predict_frames,
        scheduled_sampling=scheduled_sampling, sampling_from=sampling_from, xla_cell=xla_cell,
    )  # fmt: skip


def rollout(model, context, horizon: int, *, jit_compile: bool = False):
    """(batch, k, H, W, C) context frames → the `horizon` frames that follow, (batch, horizon, H, W, C) float32,
    each made from the context and earlier predictions only."""
    return of_model(model).rollout(model, context, horizon, jit_compile=jit_compile)


def rollout_batch_shape(model, batch: int, context_frames: int, horizon: int, frame_shape) -> tuple:
    """The shape of the inputs a rollout calls the model on (to check that XLA compiles it)."""
    frames = of_model(model).rollout_input_frames(model, context_frames, horizon)
    return (batch, frames, *frame_shape)


def describe(model_cfg) -> str:
    """The model in a few words, e.g. "nfp, [64, 64]×3², patch 4" or "tau, 16/64 channels, 2+2 blocks"."""
    return of_config(model_cfg).describe(model_cfg)


def is_direct(model_cfg) -> bool:
    return of_config(model_cfg).KIND == "direct"


def flops_per_clip(model_cfg, *, frame_shape, input_frames: int, output_frames: int) -> dict:
    """{"forward", "train" (≈ 3× forward), "params"} for one clip of `input_frames` frames in, `output_frames` out,
    counted from the layer shapes (a multiply-add is 2 FLOPs)."""
    return of_config(model_cfg).flops_per_clip(
        model_cfg, frame_shape=frame_shape, input_frames=input_frames, output_frames=output_frames
    )


def step_memory(model_cfg, *, frame_shape, input_frames: int, output_frames: int, value_bytes: int):
    """(bytes one clip holds on the device in a training step, the parameter count, what shrinks a clip's share:
    e.g. "raise model.patch_size") where the family estimates it, else None. `value_bytes`: 4 float32, 2 mixed."""
    return of_config(model_cfg).step_memory(
        model_cfg, frame_shape=tuple(frame_shape), input_frames=input_frames, output_frames=output_frames,
        value_bytes=value_bytes,
    )  # fmt: skip


def loss_terms(model_cfg) -> dict[str, float]:
    """{term: weight}: what the family adds to train.loss (each logged as its own metric)."""
    return of_config(model_cfg).loss_terms(model_cfg)


def loss_term(name: str):
    """The function of a loss term: (y_true, y_pred) → (batch,) values, one per clip."""
    fam = next((fam for fam in FAMILIES.values() if name in fam.LOSS_TERMS), None)
    if fam is None:
        raise KeyError(f"loss term {name!r}: no family has it")
    return fam.loss_term(name)


def replicated_xla(model_cfg) -> tuple[str | None, str]:
    """(the XLA mode the model supports under a replicated strategy: "cell" (it compiles its own steps) or None,
    the config key and value that decide it, for messages)."""
    return of_config(model_cfg).replicated_xla(model_cfg)


def cell_xla_probe(model, batch_shape):
    """(function, args) of the part that XLA mode "cell" compiles, for batches of `batch_shape`."""
    return of_model(model).cell_xla_probe(model, batch_shape)


def check_compatible(model, frame_shape) -> None:
    """ModelError unless the model takes (batch, time, H, W, C) clips with frame_shape = (H, W, C) and predicts
    frames of that shape, (batch, time, H, W, C): a rollout feeds its outputs back as inputs."""
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
            f"the clips are {'×'.join(map(str, frame_shape))} (wrong data.dir, data.frame_size or data.channels?)"
        )
    outputs = getattr(model, "outputs", None) or ()
    wanted = f"(batch, time, {', '.join(map(str, frame_shape))}): the next frames, shaped as the clips' frames"
    if len(outputs) > 1:
        raise ModelError(f"model has {len(outputs)} outputs: expected one, {wanted}")
    out = tuple(outputs[0].shape) if outputs else None
    if out is not None and (len(out) != 5 or any(e is not None and e != g for e, g in zip(out[2:], frame_shape))):
        raise ModelError(f"model output {out}: expected {wanted}")


def check_context(model, context_frames: int, key: str) -> None:
    """ModelError naming `key` when a direct model cannot predict from `context_frames` frames (it takes exactly
    its k: more are fine, the last k are used; fewer are not)."""
    from nfp.errors import ModelError

    fam = of_model(model)
    if fam.KIND == "direct" and context_frames < fam.context_length(model):
        raise ModelError(
            f"{key}: got {context_frames}, the model predicts from {fam.context_length(model)} context frames "
            "(a direct model takes exactly its k)"
        )
