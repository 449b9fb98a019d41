"""Input pipeline: nfp's tf.data from local TFRecords (plain, GZIP) vs the same stages from in-memory clips.

The in-memory variant is the input limit: the same uint8 clips, already decoded in RAM, through
the same shuffle → repeat → batch → float32 pairs → prefetch stages, so the ratio isolates the
cost of reading, decompressing and parsing the shards.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.common import Section, fmt, nfp_config, ratio_check

NAME = "pipeline"
TITLE = "1. Input pipeline: TFRecords vs in-memory clips"
TARGET = 0.8

SIZES = {
    # clips, image, frames, shards, batch, warm-up batches, timed batches, repeats
    False: dict(clips=2000, image=64, frames=20, shards=10, batch=16, warmup=30, batches=100, repeats=5),
    True: dict(clips=40, image=16, frames=6, shards=2, batch=4, warmup=2, batches=5, repeats=2),
}


def data_config(root: Path, compression: str, s: dict):
    return nfp_config([
        "data.source=generate", f"data.num_clips={s['clips']}", f"data.image_size={s['image']}",
        f"data.digit_size={min(28, s['image'] // 2)}", f"data.frames={s['frames']}", f"data.num_shards={s['shards']}",
        "data.split.train=0.9", "data.split.val=0.05", "data.split.test=0.05",
        f"data.compression={compression}", f"data.dir={root / compression}", "data.protocol=shift",
    ]).data


def in_memory_dataset(clips, data_cfg, batch: int):
    """The pipeline's stages after parsing, fed from a from_tensor_slices of uint8 clips (N, T, H, W)."""
    import tensorflow as tf

    def to_pairs(x):  # as nfp.data.pipeline: float32 in [0, 1], channel axis, shift or context protocol
        x = tf.cast(x, tf.float32)[..., None] / 255.0
        if data_cfg.protocol == "shift":
            return x[:, :-1], x[:, 1:]
        k, n = data_cfg.context_frames, data_cfg.predict_frames
        return x[:, :k], x[:, k : k + n]

    ds = tf.data.Dataset.from_tensor_slices(clips).shuffle(data_cfg.shuffle_buffer).repeat()
    ds = ds.batch(batch, drop_remainder=True)
    return ds.map(to_pairs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).prefetch(tf.data.AUTOTUNE)


def run(quick: bool, workdir: Path) -> Section:
    from nfp.data.pipeline import make_dataset, read_clips, split_size
    from nfp.data.prepare import prepare

    s = SIZES[quick]
    cfgs = {c: data_config(workdir / "pipeline", c, s) for c in ("none", "gzip")}
    for cfg in cfgs.values():
        prepare(cfg, progress=False)
    n_train = split_size(cfgs["none"], "train")
    clips = read_clips(cfgs["none"], "train", n_train)

    setup, iterators = {}, {}
    for label, build in [
        ("in-memory from_tensor_slices (input limit)", lambda: in_memory_dataset(clips, cfgs["none"], s["batch"])),
        ("TFRecords, plain", lambda: make_dataset(cfgs["none"], "train", s["batch"], training=True)),
        ("TFRecords, GZIP", lambda: make_dataset(cfgs["gzip"], "train", s["batch"], training=True)),
    ]:
        t0 = time.perf_counter()
        it = iter(build())  # make_dataset verifies shard sha256s once here: setup, not throughput
        for _ in range(s["warmup"]):
            next(it)
        setup[label] = time.perf_counter() - t0
        iterators[label] = it

    # Round-robin repeats so machine noise hits every variant alike; median per variant.
    times = {label: [] for label in iterators}
    for _ in range(s["repeats"]):
        for label, it in iterators.items():
            t0 = time.perf_counter()
            for _ in range(s["batches"]):
                next(it)
            times[label].append(time.perf_counter() - t0)
    clip_mb = s["frames"] * s["image"] ** 2 / 1e6
    units = s["batches"] * s["batch"]
    rate = {label: units / statistics.median(t) for label, t in times.items()}
    rows = [
        [label, rate[label], rate[label] * clip_mb, f"{fmt(units / max(t))}–{fmt(units / min(t))}", setup[label]]
        for label, t in times.items()
    ]
    base = "in-memory from_tensor_slices (input limit)"
    checks = [
        ratio_check(f"{label} / in-memory", rate[label], rate[base], TARGET, "clips/s")
        for label in ("TFRecords, plain", "TFRecords, GZIP")
    ]
    return Section(
        NAME, TITLE,
        setup=(
            f"{n_train} generated clips of {s['frames']}×{s['image']}×{s['image']} uint8 in {s['shards']} train shards on local disk; "
            f"`make_dataset(..., training=True)` (interleave → shuffle → repeat → batch {s['batch']} → parse → float32 shift pairs "
            f"(batch, {s['frames'] - 1}, {s['image']}, {s['image']}, 1) → prefetch) vs the same stages from an in-memory "
            f"`from_tensor_slices` of the same uint8 clips. {s['warmup']} warm-up batches, then {s['repeats']} round-robin repeats "
            f"of {s['batches']} batches; median."
        ),
        columns=["variant", "clips/s (median)", "MB/s of uint8 clips", "range over repeats (clips/s)", "set-up + warm-up (s)"],
        rows=rows,
        checks=checks,
        notes=["Set-up includes `make_dataset`'s one-off sha256 check of every shard against the manifest."],
        quick=quick,
    )
