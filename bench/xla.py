"""XLA and mixed precision under TensorFlow on this CPU: the same model on the same batches, side by side.

Every variant is nfp's model from `nfp.models.build_model` compiled as `nfp train` compiles it
(`nfp.training.train.compiled_model`), trained from the same initial weights on the same batches:
- precision float32 or mixed_bfloat16 (`train.mixed_precision`), the cell state and loss float32 in both;
- XLA off, "step" (Keras compiles the whole training step: one replica) or "cell" (nfp's cell compiles its
  steps through time as one XLA function: what a replicated GPU job runs) — `train.jit_compile` and nfp/distribute/devices.py.
Compile seconds = the first step (tracing + XLA compilation); steady step time = the median over rounds that
visit the variants in turn, so machine noise hits them alike. The loss column is the last of the timed steps:
bfloat16 must track float32 on the same batches.
"""

from __future__ import annotations

import statistics
import time

from bench.common import Section, child_main, fmt, machine, nfp_config, ratio_check, run_child

NAME = "xla"
TITLE = "8. XLA and bfloat16 under TensorFlow on the CPU: compile seconds and steady step time, same batches"
SIZES = {
    False: dict(preset="tiny", image=32, frames=20, batch=8, rounds=5, steps=4, timeout=2400),
    True: dict(preset="custom", image=16, frames=6, batch=2, rounds=2, steps=2, timeout=600),
}
VARIANTS = [(policy, xla) for policy in ("float32", "mixed_bfloat16") for xla in ("off", "step", "cell")]


def _variants(quick: bool) -> list[tuple[str, str]]:
    """--quick proves each path runs with fewer compiles: both policies, all three XLA modes."""
    return (
        [("float32", "off"), ("float32", "step"), ("mixed_bfloat16", "cell"), ("float32", "cell")]
        if quick
        else VARIANTS
    )


def _cfg(s: dict, policy: str, xla: str):
    extra = ["model.filters=[4]", "model.kernel_sizes=[3]"] if s["preset"] == "custom" else []
    return nfp_config(
        [
            f"model.preset={s['preset']}", *extra, f"data.image_size={s['image']}", f"data.digit_size={s['image'] // 2}",
            f"data.frames={s['frames']}", f"train.batch_size={s['batch']}", "train.loss=mse",
            f"train.mixed_precision={'off' if policy == 'float32' else 'bfloat16'}",
            f"train.jit_compile={'off' if xla == 'off' else 'on'}",
        ]
    )  # fmt: skip


def _child(args: dict) -> dict:
    import numpy as np
    import tensorflow as tf

    from nfp.distribute.devices import Choices
    from nfp.training.train import compiled_model

    s = args["sizes"]
    shape = (s["batch"], s["frames"] - 1, s["image"], s["image"], 1)
    rng = np.random.default_rng(0)
    batches = [rng.random((s["batch"], s["frames"], s["image"], s["image"], 1), dtype=np.float32) for _ in range(4)]
    models, compile_s, weights = {}, {}, None
    for policy, xla in _variants(args["quick"]):
        cfg = _cfg(s, policy, xla)
        choices = Choices(policy, xla, "forced by the benchmark")
        model, _ = compiled_model(cfg, tf.distribute.get_strategy(), 1, choices, batch_shape=shape)
        weights = weights or model.get_weights()
        model.set_weights(weights)
        t0 = time.perf_counter()
        model.train_on_batch(batches[0][:, :-1], batches[0][:, 1:])
        compile_s[f"{policy}/{xla}"] = time.perf_counter() - t0
        models[f"{policy}/{xla}"] = model
    step_s = {name: [] for name in models}
    losses = {}
    for r in range(s["rounds"]):
        for name, model in models.items():
            for i in range(s["steps"]):
                x = batches[(r * s["steps"] + i) % len(batches)]
                t0 = time.perf_counter()
                losses[name] = float(model.train_on_batch(x[:, :-1], x[:, 1:]))
                step_s[name].append(time.perf_counter() - t0)
    return {
        "compile_s": compile_s, "step_s": {k: statistics.median(v) for k, v in step_s.items()}, "loss": losses,
        "loops": _loops(s, batches, shape), "first_step_s": _first_steps(s, shape, batches, weights),
    }  # fmt: skip


def _first_steps(s: dict, shape, batches, weights) -> dict:
    """Seconds of the first float32 XLA step (the whole step compiled) of a fresh model, its optimizer's slots built
    before it ("nfp", as nfp.training.train builds them) or inside it ("keras": Keras's default on one device, where
    a step that creates variables is traced twice): the same model and weights as the float32/step variant, after it
    (XLA's one-off start-up paid), in the order keras, nfp, nfp, keras, so that neither gains from going second."""
    import tensorflow as tf

    from nfp.distribute.devices import Choices
    from nfp.models.optim import build_loss, build_optimizer
    from nfp.training.train import compiled_model

    cfg = _cfg(s, "float32", "step")
    seconds = {"keras": [], "nfp": []}
    for how in ("keras", "nfp", "nfp", "keras"):
        model, _ = compiled_model(cfg, tf.distribute.get_strategy(), 1, Choices("float32", "step", "forced"),
                                  batch_shape=shape)  # fmt: skip
        if how == "keras":  # recompiled with an optimizer not yet built
            model.compile(optimizer=build_optimizer(cfg.train, 1, 1), loss=build_loss(cfg.train, ()), jit_compile=True)
        model.set_weights(weights)
        t0 = time.perf_counter()
        model.train_on_batch(batches[0][:, :-1], batches[0][:, 1:])
        seconds[how].append(time.perf_counter() - t0)
    return {how: statistics.mean(v) for how, v in seconds.items()}


def _loops(s: dict, batches, shape) -> dict:
    """Seconds per training step of nfp's cell (float32, no XLA) with the time loop unrolled (a clip length known
    when traced: what fit sees) and as the bounded tf.scan (a length unknown when traced), same weights and batches."""
    import keras
    import tensorflow as tf

    from nfp.models import build_model

    model = build_model(_cfg(s, "float32", "off").model, frame_shape=(s["image"], s["image"], 1))
    optimizer, loss = keras.optimizers.Adam(1e-3), keras.losses.MeanSquaredError()

    def train_step(signature):
        @tf.function(input_signature=[signature, signature])
        def step(x, y):
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            optimizer.apply(tape.gradient(value, model.trainable_weights), model.trainable_weights)
            return value

        return step

    steps = {
        "unrolled": train_step(tf.TensorSpec(shape)),
        "tf.scan": train_step(tf.TensorSpec((None, None, *shape[2:]))),
    }
    first, times = {}, {name: [] for name in steps}
    for name, step in steps.items():
        t0 = time.perf_counter()
        step(batches[0][:, :-1], batches[0][:, 1:])
        first[name] = time.perf_counter() - t0
    for r in range(s["rounds"]):
        for name, step in steps.items():
            for i in range(s["steps"]):
                x = batches[(r * s["steps"] + i) % len(batches)]
                t0 = time.perf_counter()
                step(x[:, :-1], x[:, 1:])
                times[name].append(time.perf_counter() - t0)
    return {name: {"first_s": first[name], "step_s": statistics.median(times[name])} for name in steps}


def run(quick: bool, workdir) -> Section:
    s = SIZES[quick]
    result, peak = run_child("bench.xla", {"sizes": s, "quick": quick}, timeout=s["timeout"])
    base = result["step_s"]["float32/off"]
    rows = []
    for policy, xla in _variants(quick):
        name = f"{policy}/{xla}"
        rows.append([policy, xla, result["compile_s"][name], 1000 * result["step_s"][name],
                     base / result["step_s"][name], s["batch"] / result["step_s"][name], result["loss"][name]])  # fmt: skip
    fastest = min(result["step_s"], key=result["step_s"].get)
    modes = sorted({x for p, x in _variants(quick) if f"float32/{x}" in result["loss"] and p != "float32"})
    worst = max(modes, key=lambda x: abs(result["loss"][f"mixed_bfloat16/{x}"] / result["loss"][f"float32/{x}"] - 1))
    f32 = result["loss"][f"float32/{worst}"]
    loops = result["loops"]
    m = machine()
    return Section(
        NAME,
        TITLE,
        setup=(
            f"TensorFlow on this CPU ({m['cpu']}, {m['cores']} cores). `{s['preset']}` preset, clips {s['frames']}×"
            f"{s['image']}×{s['image']} (shift protocol: {s['frames'] - 1} frames in), batch {s['batch']}, MSE, Adam; "
            f"every variant from the same initial weights on the same batches; {s['rounds']} rounds × {s['steps']} "
            "steps per variant after the first (compiling) step, the rounds visiting the variants in turn. XLA "
            "`step`: Keras compiles the whole training step (one replica); `cell`: nfp's cell compiles its steps "
            "through time as one XLA function (what a replicated GPU job runs); both unroll the known clip length."
        ),
        columns=[
            "precision",
            "XLA",
            "compile s (first step)",
            "step ms (median)",
            "speed vs float32/off",
            "clips/s",
            "loss after the timed steps",
        ],
        rows=rows,
        tables=[
            (
                "The cell's time loop, float32, no XLA, same weights and batches: unrolled (the clip length known when "
                "traced, as in `fit`) against the bounded `tf.scan` (a length unknown when traced):",
                ["time loop", "first step s (trace)", "step ms (median)", "speed vs tf.scan"],
                [
                    [name, v["first_s"], 1000 * v["step_s"], loops["tf.scan"]["step_s"] / v["step_s"]]
                    for name, v in loops.items()
                ],
            ),
        ],
        checks=[
            ratio_check(
                f"largest loss gap, |bfloat16 − float32| / float32, same batches (XLA {worst})",
                abs(result["loss"][f"mixed_bfloat16/{worst}"] - f32),
                f32,
                0.02,
                "loss",
                higher_is_better=False,
            ),
            ratio_check(
                "first XLA step of a fresh model (float32, whole step compiled, mean of 2): optimizer's slots built "
                "before it, as nfp builds them / inside it, Keras's default on one device (the step traced twice)",
                result["first_step_s"]["nfp"],
                result["first_step_s"]["keras"],
                1.0,
                "s",
                higher_is_better=False,
            ),
        ],
        notes=[
            f"Fastest here: {fastest} ({fmt(1000 * result['step_s'][fastest])} ms a step). A CPU shows what it can of "
            "the GPU path (compile cost, that bfloat16 trains alike); `auto` keeps both off on a CPU and turns them on "
            "where a GPU is visible (nfp/distribute/devices.py). The GPU's own figures: `nfp doctor` on the VM.",
            f"Peak RSS of the benchmark process: {fmt(peak)} MB.",
        ],
        quick=quick,
    )


if __name__ == "__main__":
    child_main(_child)
