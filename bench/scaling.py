"""Scaling on paper: step time under MirroredStrategy on 1 and 2 logical CPU devices, and FLOPs per clip.

FLOPs are counted analytically from the layer shapes (`nfp.models.flops_per_clip`), per frame on H×W with
`same` padding, a multiply-add counted as 2 FLOPs:
- ConvLSTM2D (C input channels, F filters, k×k kernel): the 4 gates are one k×k conv of the
  input (C → 4F) and one of the hidden state (F → 4F): 2·H·W·k²·(C+F)·4F, plus ≈ 13·F·H·W for
  bias, 3 sigmoids, 2 tanh and the cell/hidden updates;
- BatchNorm (inference: scale + shift) 2·F·H·W; LayerNorm ≈ 8·F·H·W;
- causal Conv3D head (kt×kh×kw, F → 1): 2·H·W·kt·kh·kw·F + H·W (+ the sigmoid, H·W).
Forward FLOPs per clip = frames × the sum over layers; a training step ≈ 3× forward (the backward
pass costs about twice the forward). A GPU's clips/s ≈ its sustained FLOP/s ÷ training FLOPs per clip.
The parameter count the same formula implies is checked against Keras's count_params().
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

from bench.common import Section, child_main, nfp_config, ratio_check, run_child
from nfp.models import flops_per_clip

NAME = "scaling"
TITLE = "4. Scaling on paper: MirroredStrategy step time, FLOPs per clip"
PRESETS = ("tiny", "keras_io", "convlstm_s")
FLOPS_SHAPE = (19, 64, 64)  # frames in (shift protocol on 20-frame clips), H, W

SIZES = {
    False: dict(preset="tiny", image=32, frames=19, batch=8, steps=10, epochs=3, timeout=1800),
    True: dict(preset="custom", image=16, frames=5, batch=2, steps=2, epochs=1, timeout=300),
}


def _model_cfg(preset: str):
    extra = ["model.filters=[4]", "model.kernel_sizes=[3]"] if preset == "custom" else []
    return nfp_config([f"model.preset={preset}", *extra]).model


def _child(args: dict) -> dict:
    """In a fresh process with 2 logical CPU devices: seconds per step for 1 and 2 replicas."""
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from nfp.distribute import make_strategy
    from nfp.models import build_model

    out = {}
    for n in (1, 2):
        devices = "[" + ", ".join(f"'/cpu:{i}'" for i in range(n)) + "]"
        strategy = make_strategy(
            nfp_config(["distribute.strategy=mirrored", f"distribute.devices={devices}"]).distribute
        )
        assert strategy.num_replicas_in_sync == n
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build_model(_model_cfg(args["preset"]), frame_shape=(args["image"], args["image"], 1))
            model.compile(optimizer="adam", loss="binary_crossentropy")
        shape = (args["batch"] * n, args["frames"], args["image"], args["image"], 1)
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        ds = tf.data.Dataset.from_tensors((x, x)).repeat()  # synthetic: compute and all-reduce only
        ends: list[float] = []
        timer = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs, ends=ends: ends.append(time.perf_counter())
        )
        model.fit(ds, epochs=1 + args["epochs"], steps_per_epoch=args["steps"], callbacks=[timer], verbose=0)
        out[str(n)] = statistics.median(b - a for a, b in itertools.pairwise(ends)) / args["steps"]
    return out


def run(quick: bool, workdir: Path) -> Section:
    s = SIZES[quick]
    steps, _ = run_child("bench.scaling", {k: v for k, v in s.items() if k != "timeout"}, timeout=s["timeout"])
    t1, t2 = steps["1"], steps["2"]
    measured = flops_per_clip(
        _model_cfg(s["preset"]),
        frame_shape=(s["image"], s["image"], 1),
        input_frames=s["frames"],
        output_frames=s["frames"],
    )
    rows = [
        [
            f"{n} replica(s)",
            t,
            s["batch"],
            s["batch"] * n,
            s["batch"] * n / t,
            s["batch"] * n / t * measured["train"] / 1e9,
        ]
        for n, t in ((1, t1), (2, t2))
    ]
    flops_rows = []
    t, h, w = FLOPS_SHAPE
    from nfp.models import build_model

    for preset in PRESETS:
        cfg = _model_cfg(preset)
        f = flops_per_clip(cfg, frame_shape=(h, w, 1), input_frames=t, output_frames=t)
        keras_params = build_model(cfg, frame_shape=(h, w, 1)).count_params()
        flops_rows.append(
            [
                f"`{preset}`",
                f"{keras_params:,}",
                f"{f['params']:,}",
                f["forward"] / 1e9,
                f["train"] / 1e9,
                10e12 / f["train"],
            ]
        )
    model = f"`{s['preset']}` preset" if s["preset"] == "tiny" else "custom ConvLSTM [4 filters, 3×3]"
    return Section(
        NAME,
        TITLE,
        setup=(
            f"Part 1: a child process splits the CPU into 2 logical devices (`tf.config.set_logical_device_configuration`) "
            f"and trains {model} at {s['frames']}×{s['image']}×{s['image']} under `nfp.distribute.make_strategy` "
            f"(`mirrored`, devices /cpu:0 or /cpu:0 + /cpu:1), {s['batch']} clips per replica, synthetic data; median epoch "
            f"of {s['steps']} steps over {s['epochs']} epoch(s) after a warm-up epoch. Both logical devices share the same "
            f"cores, so 2 replicas do twice the work on the same silicon: the figure is MirroredStrategy's overhead, and "
            f"on real GPUs each replica has its own device. Part 2: FLOPs per clip at {t}×{h}×{w} (frames in × H × W), "
            "counted from the layer shapes as documented in bench/scaling.py."
        ),
        columns=[
            "MirroredStrategy",
            "s / step",
            "clips / replica / step",
            "global batch",
            "clips/s",
            "achieved GFLOP/s (train)",
        ],
        rows=rows,
        checks=[
            ratio_check("2-replica step time / (2 × 1-replica step time): 1.0 = no overhead", t2, 2 * t1, None, "s")
        ],
        tables=[
            (
                f"FLOPs per clip at {t}×{h}×{w} (training ≈ 3× forward; last column: the clips/s a GPU sustaining 10 TFLOP/s "
                "would reach — scale by the card's sustained rate):",
                [
                    "preset",
                    "params (Keras)",
                    "params (formula)",
                    "forward GFLOP / clip",
                    "train GFLOP / clip",
                    "clips/s at 10 TFLOP/s",
                ],
                flops_rows,
            )
        ],
        notes=["Achieved GFLOP/s = clips/s × the analytic training FLOPs per clip at the measured shape."],
        quick=quick,
    )


if __name__ == "__main__":
    child_main(_child)
