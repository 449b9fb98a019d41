"""Training throughput: `nfp train` (its tf.data pipeline, callbacks and tracking) vs the keras-io loop.

The keras-io reference (examples/vision/conv_lstm.py) loads the whole set into numpy, builds
shifted frames and calls `model.fit(x, y, batch_size=5, validation_data=..., callbacks=
[EarlyStopping, ReduceLROnPlateau])`. Both sides train the same nfp model on the same clips with
the same batch, optimizer and loss. Warm-up (graph tracing, first epoch) is excluded on both:
- reference: a timing callback placed last measures epochs 2..E end to end;
- nfp: `train()` cannot take extra callbacks, so its steady-state time is the wall-clock
  difference between a run of 1+E' epochs and a run of 1 epoch (fresh output dirs) — everything
  an epoch costs (checkpoints, images, CSV, backup, MLflow logging) is inside it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.common import Section, fmt, nfp_config, ratio_check

NAME = "training"
TITLE = "2. Training throughput: `nfp train` vs the keras-io reference loop"
TARGET = 1.0
BATCH = 5  # the keras-io example's batch size, used by both sides

SIZES = {
    False: dict(image=32, frames=10, train=300, val=50, epochs=3, repeats=2, preset="tiny", tracking=True),
    True: dict(image=16, frames=6, train=20, val=5, epochs=1, repeats=1, preset="custom", tracking=False),
}


def config(workdir: Path, s: dict, run: str, epochs: int):
    model = (
        ["model.preset=tiny"]
        if s["preset"] == "tiny"
        else ["model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]"]
    )
    return nfp_config(
        [
            "data.source=generate",
            f"data.image_size={s['image']}",
            f"data.digit_size={s['image'] // 2}",
            f"data.frames={s['frames']}",
            f"data.num_clips={s['train'] + 2 * s['val']}",
            "data.num_shards=2",
            f"data.split.train={s['train']}",
            f"data.split.val={s['val']}",
            f"data.split.test={s['val']}",
            f"data.dir={workdir / 'data'}",
            "data.protocol=shift",
            *model,
            f"train.epochs={epochs}",
            f"train.batch_size={BATCH}",
            "train.learning_rate=0.001",
            "train.loss=bce",
            "train.verbose=0",
            f"train.output_dir={workdir / run}",
            "distribute.strategy=default",
            f"tracking.enabled={'true' if s['tracking'] else 'false'}",
            f"tracking.experiment=bench-{NAME}",
        ]
    )


def reference_rate(cfg, *, train: int, val: int, epochs: int, batch: int = BATCH, jit_compile: bool = False) -> float:
    """keras-io loop: numpy shifted frames into model.fit(batch_size=batch); clips/s over epochs 2..1+epochs."""
    import keras
    import numpy as np

    from nfp.data.manifest import load_manifest
    from nfp.data.pipeline import read_clips
    from nfp.models import build_model

    manifest = load_manifest(cfg.data.dir)

    def shifted(split: str, n: int):
        x = read_clips(cfg.data, manifest, split, n).astype(np.float32) / 255.0
        return x[:, :-1], x[:, 1:]

    (x_train, y_train), val_data = shifted("train", train), shifted("val", val)
    keras.utils.set_random_seed(cfg.train.seed)
    model = build_model(cfg.model, frame_shape=cfg.data.frame_shape)
    model.compile(
        loss=keras.losses.binary_crossentropy,
        optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
        jit_compile=jit_compile,
    )
    ends = []  # last callback: each epoch's end after every other callback ran
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=10),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=5),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter())),
    ]
    model.fit(
        x_train, y_train, batch_size=batch, epochs=1 + epochs, validation_data=val_data, callbacks=callbacks, verbose=0
    )
    return len(x_train) * epochs / (ends[-1] - ends[0])


def nfp_rate(workdir: Path, s: dict, repeat: int) -> tuple[float, float]:
    """`nfp train` steady state: (clips/s from the 1+E vs 1 epoch difference, EpochStats' own median clips/s)."""
    from nfp.training.train import train

    seconds = {}
    for epochs in (1, 1 + s["epochs"]):
        cfg = config(workdir, s, f"nfp-{repeat}-{epochs}", epochs)
        t0 = time.perf_counter()
        summary = train(cfg)
        seconds[epochs] = time.perf_counter() - t0
    logged = summary["history"].get("clips_per_sec", [float("nan")])[1:] or [float("nan")]
    steady = seconds[1 + s["epochs"]] - seconds[1]
    return (s["train"] * s["epochs"] / steady if steady > 0 else float("nan")), statistics.median(logged)


def run(quick: bool, workdir: Path) -> Section:
    from nfp.data.prepare import prepare

    s = SIZES[quick]
    prepare(config(workdir, s, "prep", 1).data, progress=False)
    from nfp.training.train import train

    if not quick:
        train(config(workdir, s, "warm-up", 1))  # one-off imports and first traces, outside every timing
    ref, ours, logged = [], [], []
    for r in range(s["repeats"]):  # alternate sides so machine noise hits both alike
        ref.append(reference_rate(config(workdir, s, "ref", 1), train=s["train"], val=s["val"], epochs=s["epochs"]))
        rate, epoch_stats = nfp_rate(workdir, s, r)
        ours.append(rate)
        logged.append(epoch_stats)
    ref_rate, our_rate = statistics.median(ref), statistics.median(ours)
    cfg = config(workdir, s, "x", 1)
    model = f"`{s['preset']}` preset" if s["preset"] == "tiny" else "custom ConvLSTM [4 filters, 3×3]"
    return Section(
        NAME,
        TITLE,
        setup=(
            f"CPU, {model}, clips {s['frames']}×{s['image']}×{s['image']} (shift protocol: {s['frames'] - 1} frames in, "
            f"{s['frames'] - 1} out), {s['train']} training + {s['val']} validation clips, batch {BATCH}, Adam "
            f"{cfg.train.learning_rate:g}, BCE, validation every epoch on both sides. Steady state over {s['epochs']} epoch(s) "
            f"after a warm-up epoch; median of {s['repeats']} alternating repeat(s). `nfp train` runs with its default "
            f"callbacks (best + last checkpoints, BackupAndRestore, CSV, prediction images every epoch"
            + (", MLflow tracking to a scratch sqlite store" if s["tracking"] else ", tracking off")
            + ")."
        ),
        columns=["loop", "clips/s (median)", "per repeat"],
        rows=[
            ["keras-io reference: numpy → model.fit(batch_size=5)", ref_rate, ", ".join(fmt(v) for v in ref)],
            ["`nfp train` (tf.data + callbacks), wall clock", our_rate, ", ".join(fmt(v) for v in ours)],
            [
                "`nfp train`, training part only (EpochStats `clips_per_sec`)",
                statistics.median(logged),
                ", ".join(fmt(v) for v in logged),
            ],
        ],
        checks=[ratio_check("`nfp train` / keras-io reference", our_rate, ref_rate, TARGET, "clips/s")],
        notes=[
            "Same model on both sides: `nfp.models.build_model` (causal head), not the keras-io model with its leaking head.",
            "`nfp train` time includes everything its epochs do (validation, checkpoints, images, CSV, backup, tracking).",
        ],
        quick=quick,
    )
