"""What the devices decide: XLA and the mixed-precision policy, in one place, testable without a GPU.

`choose` is a pure function of the devices a process sees (and of the config's knobs), so a test can
hand it an H100's description on a CPU, and `train.jit_compile: on` / `train.mixed_precision: bfloat16`
make a CPU run take exactly a GPU's choices. `auto` means:
- precision: mixed_bfloat16 where every GPU computes bfloat16 natively (compute capability ≥ 8.0: A100,
  L4, H100, H200), mixed_float16 on older GPUs, float32 without a GPU;
- XLA: on where a GPU is visible (on a CPU it compiled for seconds and ran slower: BENCHMARKS section 8), and
  only where it compiles: `xla_failure` converts the model's training step to XLA before training, and
  a failure under `auto` falls back to no XLA with a warning (under `on` it is an error).
Where XLA applies depends on the strategy: under the default strategy Keras compiles the whole step
(`model.compile(jit_compile=True)`); under MirroredStrategy and MultiWorkerMirroredStrategy Keras cannot
(an XLA step reads every replica's variables from the first replica's device: keras-team/keras#19005),
so XLA goes where the model's family supports it (nfp.models.replicated_xla): the convlstm family's nfp cell
compiles its steps through time as one XLA function of the weights' values, on each replica; other families run
without XLA there.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

from nfp.errors import ConfigError, tf_error_line

log = logging.getLogger(__name__)

KERAS_19005 = "https://github.com/keras-team/keras/issues/19005"

# Dense bfloat16 peak of each card (TFLOP/s, NVIDIA data sheets, without sparsity): model FLOP utilisation's
# denominator. Matched by substring of the device name, first match wins.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
CPU_CORE_TFLOPS = 0.16  # nominal, per core: 2 AVX-512 FMA units × 16 float32 lanes × 2 FLOPs × 2.5 GHz


# Memory of each card (GiB) where its name does not say it ("NVIDIA H100 80GB HBM3" does), by substring, first match
# wins; and where the name's figure is not the GPU's ("NVIDIA GH200 480GB": the superchip's, its CPU's memory too).
NAME_GB_NOT_THE_GPUS = ("GH200",)
MEMORY_GIB = {
    "GH200": 96, "H200": 141, "H100 NVL": 94, "H100": 80, "A100": 40, "L40": 48, "A10G": 24, "L4": 24, "V100": 16,
    "T4": 16,
}  # fmt: skip


@dataclass(frozen=True)
class Device:
    kind: str  # "GPU" or "CPU"
    name: str = ""  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: tuple[int, int] | None = None

    @property
    def memory_bytes(self) -> int | None:
        """A GPU's memory from its name ("…80GB…") or MEMORY_GIB; a CPU's, this machine's; None where unknown."""
        if self.kind != "GPU":
            from nfp.data.plan import memory_bytes

            return memory_bytes()
        said = re.search(r"(\d+)\s*GB", self.name)
        known = next((g for key, g in MEMORY_GIB.items() if key in self.name), None)
        gib = int(said.group(1)) if said and not any(k in self.name for k in NAME_GB_NOT_THE_GPUS) else known
        return gib * 2**30 if gib else None


@dataclass(frozen=True)
class Choices:
    policy: str  # Keras dtype policy: float32 | mixed_bfloat16 | mixed_float16
    xla: str  # off | step (Keras compiles the training step) | cell (nfp's cell compiles its steps through time)
    why: str  # one line: what was chosen and why
    fallback: str | None = None  # the cause, when `auto` wanted XLA and the model did not compile
    devices: tuple[Device, ...] = ()  # the devices seen, that the choices were made from

    @property
    def jit_compile(self) -> bool:
        """XLA for whole functions nfp compiles itself (evaluation, rollouts): on wherever training uses it."""
        return self.xla != "off"


def visible_devices() -> list[Device]:
    """The GPUs TensorFlow sees, with name and compute capability; [CPU] without one."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return [Device("CPU", "CPU")]
    details = [tf.config.experimental.get_device_details(g) for g in gpus]
    return [
        Device(
            "GPU", d.get("device_name", "GPU"), tuple(d["compute_capability"]) if d.get("compute_capability") else None
        )
        for d in details
    ]


def choose(train_cfg, model_cfg, devices: list[Device], *, replicated: bool) -> Choices:
    """The policy and XLA mode for `devices` (visible_devices()); `replicated`: a Mirrored/MultiWorker strategy
    (model_cfg matters only then: its family's replicated XLA mode)."""
    from nfp import models

    replicated_xla, deciding_key = models.replicated_xla(model_cfg) if replicated else (None, "")

    gpus = [d for d in devices if d.kind == "GPU"]
    policy = _policy(train_cfg.mixed_precision, gpus)
    wanted = train_cfg.jit_compile == "on" or (train_cfg.jit_compile == "auto" and bool(gpus))
    if not wanted:
        xla, reason = "off", "train.jit_compile: off" if train_cfg.jit_compile == "off" else "no GPU"
    elif not replicated:
        xla, reason = "step", "one replica: Keras compiles the training step"
    elif replicated_xla == "cell":
        xla, reason = (
            "cell",
            f"replicated: the nfp cell compiles its steps (Keras cannot compile the step, {KERAS_19005})",
        )
    elif train_cfg.jit_compile == "on":
        raise ConfigError(
            f"train.jit_compile: on, expected off or auto with {deciding_key} under a replicated strategy "
            f"(Keras cannot compile a replicated step, {KERAS_19005}; only model.cell: nfp compiles its own steps)"
        )
    else:
        xla, reason = "off", f"{deciding_key}, replicated (Keras cannot compile a replicated step, {KERAS_19005})"
    where = ", ".join(sorted({d.name for d in devices})) or "CPU"
    why = f"{len(gpus) or 1}x {where}: precision {policy}, XLA {xla} ({reason})"
    return Choices(policy, xla, why, devices=tuple(devices))


def _policy(setting: str, gpus: list[Device]) -> str:
    if setting == "off":
        return "float32"
    if setting in ("bfloat16", "float16"):
        return f"mixed_{setting}"
    if not gpus:
        return "float32"
    capabilities = [d.compute_capability or (0, 0) for d in gpus]
    return "mixed_bfloat16" if min(capabilities) >= (8, 0) else "mixed_float16"  # one policy: the weakest decides


def confirmed(choices: Choices, jit_compile: str, model, batch_shape, *, loss=None) -> Choices:
    """`choices` once the model is built: unchanged when XLA is off or the model compiles; without XLA, the cause
    recorded and a warning, when it does not under train.jit_compile auto; under on, a TrainingError (one line)."""
    from nfp.errors import TrainingError

    if choices.xla == "off":
        return choices
    cause = xla_failure(model, batch_shape, loss=loss, cell_only=choices.xla == "cell")
    if cause is None:
        return choices
    if jit_compile == "on":
        raise TrainingError(f"train.jit_compile: on, but XLA cannot compile the model ({cause}); use auto or off")
    log.warning("train.jit_compile: auto: XLA cannot compile the model (%s); going on without XLA", cause)
    return dataclasses.replace(
        choices, xla="off", why=f"{choices.why}; XLA off: it did not compile ({cause})", fallback=cause
    )


def for_inference(train_cfg, model, batch_shape) -> Choices:
    """What evaluate and predict run a loaded model with on this machine's devices (one replica, its own policy)."""
    choices = choose(train_cfg, None, visible_devices(), replicated=False)
    return confirmed(choices, train_cfg.jit_compile, model, batch_shape)


def xla_failure(model, batch_shape, *, loss=None, cell_only: bool = False) -> str | None:
    """None when what XLA will compile converts to XLA for inputs of `batch_shape` (batch, time, H, W, C): the
    model's computation (with a loss, the training one: forward, loss, gradients), or with `cell_only` the nfp
    cell's steps and their gradients (XLA mode "cell"); else the cause, one line. Converts only (to HLO): runs
    nothing and changes no variable, so it is safe before training, also on replicated variables."""
    import numpy as np
    import tensorflow as tf

    if cell_only:
        from nfp.models import cell_xla_probe

        probe, args = cell_xla_probe(model, batch_shape)
        step = tf.function(probe, jit_compile=True)
    else:
        args = (np.zeros(batch_shape, np.float32),)

        @tf.function(jit_compile=True)
        def step(x):
            if loss is None:
                return model(x, training=False)
            with tf.GradientTape() as tape:
                y = model(x, training=True)
                value = loss(tf.zeros_like(y), y)
            return value, tape.gradient(value, model.trainable_weights)

    try:
        step.experimental_get_compiler_ir(*args)(stage="hlo")
    except Exception as err:  # noqa: BLE001 -- whatever tf2xla raises is the cause to report
        return tf_error_line(err)
    return None


def peak_tflops(device: Device) -> float | None:
    """The card's dense bfloat16 peak (PEAK_BF16_TFLOPS); a CPU's nominal peak over its cores; None for other cards."""
    if device.kind == "CPU":
        import os

        return CPU_CORE_TFLOPS * len(os.sched_getaffinity(0))
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in device.name), None)


def check_step_fits(train_cfg, model_cfg, choices: Choices, *, frame_shape, input_frames: int, output_frames: int):
    """ConfigError naming train.batch_size (and the model key that shrinks a clip's share) when a training step's
    estimated memory — the family's activations per clip times the batch per device, plus weights, gradients and
    Adam's moments — exceeds the smallest device's; before any model is built. Silent for families that make no
    estimate, and for devices of unknown memory."""
    from nfp import models

    estimate = models.step_memory(
        model_cfg, frame_shape=frame_shape, input_frames=input_frames, output_frames=output_frames,
        value_bytes=4 if choices.policy == "float32" else 2,
    )  # fmt: skip
    known = [d for d in choices.devices if d.memory_bytes]
    if estimate is None or not known:
        return
    per_clip, params, shrink = estimate
    device = min(known, key=lambda d: d.memory_bytes)
    need = train_cfg.batch_size * per_clip + 16 * params  # float32 weights and gradients, two Adam moments
    if need > device.memory_bytes:
        from nfp.data.plan import size_text

        clip = "×".join(str(s) for s in (input_frames, *frame_shape))
        raise ConfigError(
            f"train.batch_size: {train_cfg.batch_size} clips of {clip} per device need about {size_text(need)} in a "
            f"training step ({size_text(per_clip)} per clip, precision {choices.policy}), the {device.name} has "
            f"{size_text(device.memory_bytes)}; lower train.batch_size or {shrink}"
        )
