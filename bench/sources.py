"""Video sources: `nfp prepare` from mp4 files vs PyAV's bare decode of them, peak RSS for few vs many files, tf.data
clips/s of the prepared 128×128×3 clips vs the same clips in memory.

Decoding and preparing run each in a child process (`python -m bench.sources JSON`), so peak RSS is prepare's alone
(the child's own VmHWM; bench.common.run_child says why not ru_maxrss) and every side starts alike. The videos are
tests/media.py's moving shapes, written with PyAV (mpeg4), the same files for every side.
"""

from __future__ import annotations

import concurrent.futures
import gc
import importlib.util
import multiprocessing
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

from bench.common import REPO, Check, Section, child_main, fmt, nfp_config, ratio_check, run_child
from bench.pipeline import TARGET, in_memory_dataset  # section 1's target and input limit (the same stages from RAM)

NAME = "sources"
TITLE = "9. Video sources: `nfp prepare` from mp4 files vs PyAV's bare decode, tf.data at 128×128×3"
RSS_TARGET = 1.2  # peak RSS, many files / few: prepare holds a chunk of clips, never all of them
GPU_CLIPS_64 = 692  # nfp `convlstm_s` training on an H200, 20×64×64×1 clips (section 7, bench/results)

SIZES = {
    # videos written (frames each, H×W), the first `timed` of them timed, `few` vs all of them for peak RSS;
    # clips of `frames` frames at `out`×`out`×3; tf.data: batch, warm-up and timed batches, round-robin repeats;
    # decode and prepare: round-robin runs of each side
    False: dict(videos=80, length=200, hw=(240, 320), timed=24, few=10, frames=20, out=128, batch=16, warmup=5,
                batches=30, repeats=5, runs=3, timeout=900),
    True: dict(videos=4, length=40, hw=(48, 64), timed=4, few=2, frames=20, out=32, batch=4, warmup=1, batches=2,
               repeats=2, runs=1, timeout=300),
}  # fmt: skip


def _media():
    """tests/media.py (moving_shapes, write_video): the videos the tests read, loaded by path (tests/ is no package)."""
    spec = importlib.util.spec_from_file_location("nfp_test_media", REPO / "tests" / "media.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_videos(root: Path, s: dict) -> dict[str, Path]:
    """{set: folder}: all videos in `many`, hard links to the first `timed` and `few` of them in their own folders."""
    media = _media()
    folders = {name: root / name for name in ("many", "timed", "few")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(s["videos"]):
        path = media.write_video(folders["many"] / f"v{i:03d}.mp4", media.moving_shapes(s["length"], *s["hw"], seed=i))
        for name in ("timed", "few"):
            if i < s[name]:
                os.link(path, folders[name] / path.name)
    return folders


def _decode_file(path: str) -> int:
    """Every frame of a video decoded to RGB (what any reader of it must do at least): the frame count."""
    import av

    n = 0
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


class _WorkerPeaks:
    """Peak RSS (VmHWM, MB) of this process's children (prepare's pool), polled while they live."""

    def __init__(self, every: float = 0.05):
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(every,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self, every: float) -> None:
        me = os.getpid()
        while not self._stop.wait(every):
            for task in Path(f"/proc/{me}/task").iterdir():
                try:
                    pids = (task / "children").read_text().split()
                except OSError:
                    continue
                for pid in map(int, pids):
                    try:
                        if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue  # multiprocessing's helper, not a worker
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            self.peaks[pid] = max(self.peaks.get(pid, 0.0), int(line.split()[1]) / 1024)


def _data_cfg(args: dict):
    return nfp_config(
        [
            "data.source=video",
            f"data.path={args['path']}",
            f"data.frames={args['frames']}",
            f"data.clip_stride={args['frames']}",
            f"data.frame_size=[{args['out']},{args['out']}]",
            "data.channels=3",
            f"data.prepare_processes={args.get('processes', 1)}",
            f"data.dir={args.get('dir', '')}",
        ]
    ).data


def _child(args: dict) -> dict:
    """In a fresh process: 'decode' times bare PyAV decoding; 'prepare' times prepare(); 'floor' only imports."""
    import av

    if args["mode"] in ("prepare", "floor"):
        # prepare writes shards with TensorFlow's TFRecordWriter: its one-off import outside the timing, its memory
        # in every prepare RSS figure (the floor row)
        import tensorflow  # noqa: F401

        from nfp.data.prepare import prepare
    if args["mode"] == "floor":
        return {}
    paths = sorted(str(p) for p in Path(args["path"]).glob("*.mp4"))
    with av.open(paths[0]) as container:  # PyAV's one-off set-up (codecs, libraries) outside the timing, both sides
        next(container.decode(video=0))
    if args["mode"] == "decode":
        t0 = time.perf_counter()
        if args["processes"] == 1:
            frames = sum(map(_decode_file, paths))
        else:
            context = multiprocessing.get_context("spawn")  # as nfp's pool, started inside the timing as nfp's is
            with concurrent.futures.ProcessPoolExecutor(args["processes"], mp_context=context) as pool:
                frames = sum(pool.map(_decode_file, paths))
        return {"seconds": time.perf_counter() - t0, "frames": frames}
    cfg = _data_cfg(args)
    with _WorkerPeaks() as workers:
        t0 = time.perf_counter()
        manifest = prepare(cfg, progress=False)
        seconds = time.perf_counter() - t0
    clips = sum(manifest.count(split) for split in manifest.splits)
    return {
        "seconds": seconds,
        "clips": clips,
        "frames": clips * cfg.frames,  # clip_stride = frames, frame_step 1: every source frame in exactly one clip
        "shards": sum(len(manifest.shards(split)) for split in manifest.splits),
        "workers_peak_mb": sorted(workers.peaks.values()),
    }


def _tf_rates(cfg, s: dict) -> tuple[dict[str, float], dict[str, list[float]], int]:
    """{variant: clips/s (median)}, {variant: per-repeat clips/s}, training clips: make_dataset vs in memory."""
    from nfp.data.manifest import load_manifest
    from nfp.data.pipeline import make_dataset, read_clips

    manifest = load_manifest(cfg.dir)
    n_train = manifest.count("train")
    clips = read_clips(cfg, manifest, "train", n_train)
    variants = {
        "in-memory from_tensor_slices (input limit)": lambda: in_memory_dataset(clips, cfg, s["batch"]),
        "`make_dataset` from the prepared TFRecords": lambda: make_dataset(
            cfg, manifest, "train", s["batch"], training=True
        ),
    }
    # One live pipeline at a time, round-robin repeats so machine noise hits both alike (as bench/pipeline.py).
    times = {label: [] for label in variants}
    units = s["batches"] * s["batch"]
    for _ in range(s["repeats"]):
        for label, build in variants.items():
            it = iter(build())
            for _ in range(s["warmup"]):
                next(it)
            t0 = time.perf_counter()
            for _ in range(s["batches"]):
                next(it)
            times[label].append(time.perf_counter() - t0)
            del it
            gc.collect()
    rates = {label: units / statistics.median(t) for label, t in times.items()}
    return rates, {label: [units / x for x in t] for label, t in times.items()}, n_train


def run(quick: bool, workdir: Path) -> Section:
    s = SIZES[quick]
    folders = write_videos(workdir / "videos", s)
    common = {"frames": s["frames"], "out": s["out"]}

    def child(args: dict) -> tuple[dict, float]:
        return run_child("bench.sources", {**common, **args}, timeout=s["timeout"])

    load = os.getloadavg()[0]
    # Round-robin repeats, each side in a fresh child, so machine noise hits every side alike; median per side.
    sides = [(mode, p) for mode in ("decode", "prepare") for p in (1, 2)]
    runs = {side: [] for side in sides}
    for r in range(s["runs"]):
        for mode, p in sides:
            out = workdir / f"timed-{p}-{r}"  # a fresh data.dir each time: prepare would reuse a prepared one
            runs[mode, p].append(child({"mode": mode, "path": str(folders["timed"]), "processes": p, "dir": str(out)}))
            if mode == "prepare" and (p, r) != (1, 0):  # the first one-process data set feeds the tf.data figures
                shutil.rmtree(out)
    rss = {
        name: child({"mode": "prepare", "path": str(folders[name]), "processes": 1, "dir": str(workdir / name)})
        for name in ("few", "many")
    }
    floor_rss = float("nan") if quick else child({"mode": "floor", "path": str(folders["few"])})[1]

    per_repeat = {side: [r["frames"] / r["seconds"] for r, _ in results] for side, results in runs.items()}
    rate = {side: statistics.median(x) for side, x in per_repeat.items()}
    h, w = s["hw"]
    rows = []
    for (mode, p), results in runs.items():
        label = (
            f"PyAV bare decode → RGB ndarray, {p} process{'es' * (p > 1)} (the limit)"
            if mode == "decode"
            else f"`nfp prepare`, `data.prepare_processes={p}`"
        )
        peak = max(mb for _, mb in results)
        workers = max((r.get("workers_peak_mb", []) for r, _ in results), key=sum)
        rows.append([
            label,
            rate[mode, p],
            f"{rate[mode, p] / rate['decode', p]:.2f}×" if mode == "prepare" else "",
            ", ".join(fmt(x) for x in sorted(per_repeat[mode, p])),
            statistics.median(r["seconds"] for r, _ in results),
            f"{fmt(peak)} + workers {' + '.join(fmt(x) for x in workers)}" if workers else peak,
        ])  # fmt: skip
    clip_mb = s["frames"] * s["out"] ** 2 * 3 / 1e6
    files = {"few": s["few"], "many": s["videos"]}
    rss_rows = [
        [f"{files[name]} files", r["clips"], r["clips"] * clip_mb, r["shards"], r["clips"] * clip_mb / r["shards"],
         r["seconds"], mb, mb - floor_rss]
        for name, (r, mb) in rss.items()
    ]  # fmt: skip
    rss_rows.append(
        ["floor: Python + TensorFlow + nfp.data.prepare + PyAV imported, nothing done", *[""] * 5, floor_rss, ""]
    )

    import tensorflow  # noqa: F401  the parent's one-off import, outside the timings

    cfg = _data_cfg({**common, "path": str(folders["timed"]), "dir": str(workdir / "timed-1-0")})
    rates, tf_repeats, n_train = _tf_rates(cfg, s)
    limit, tfrecords = list(rates)
    decode, prep = rate["decode", 1], {p: rate["prepare", p] for p in (1, 2)}
    # A GPU's appetite at 128×128: section 7's convlstm_s rate at 64×64, its convolutions' work scaling with the
    # pixels (4×); the 3 input channels touch only the first layer's input side.
    gpu_need = GPU_CLIPS_64 * (64 * 64) / s["out"] ** 2
    tf_rows = [
        [label, rates[label], rates[label] * clip_mb, ", ".join(fmt(x) for x in sorted(tf_repeats[label]))]
        for label in rates
    ]

    checks = [
        ratio_check("`nfp prepare` / PyAV bare decode, 1 process", prep[1], decode, None, "frames/s"),
        ratio_check("`nfp prepare` / PyAV bare decode, 2 processes", prep[2], rate["decode", 2], None, "frames/s"),
        ratio_check("`nfp prepare`, 2 processes / 1 process", prep[2], prep[1], None, "frames/s"),
        ratio_check("PyAV bare decode, 2 processes / 1 process", rate["decode", 2], decode, None, "frames/s"),
        ratio_check(
            f"`nfp prepare` peak RSS, {s['videos']} files / {s['few']} files",
            rss["many"][1],
            rss["few"][1],
            RSS_TARGET,
            "MB",
            higher_is_better=False,
        ),
        ratio_check(
            f"tf.data {s['out']}×{s['out']}×3, TFRecords / in-memory", rates[tfrecords], rates[limit], TARGET, "clips/s"
        ),
        Check(
            f"tf.data TFRecords / one GPU's estimated need at {s['out']}×{s['out']}×3",
            rates[tfrecords] / gpu_need,
            "≥ 1×",
            rates[tfrecords] >= gpu_need,
            f"{fmt(rates[tfrecords])} / {fmt(gpu_need)} clips/s",
        ),
    ]
    notes = [
        f"Frames/s counts source frames ({h}×{w}) turned into clip frames: with `data.clip_stride` = `data.frames` "
        f"and `data.frame_step` 1 each frame is in exactly one clip. `nfp prepare` also indexes every file (one "
        f"demux pass over its packets), resizes and centre-crops each frame to {s['out']}×{s['out']} (in the decoder: swscale), and "
        "writes shards (TensorFlow's TFRecordWriter, imported before the clock) with their sha256 and the manifest and "
        "previews; the bare decode does none of that.",
        f"Two processes on {os.cpu_count()} cores: at most 2× one process, for the bare decode as for prepare (a "
        "measured ratio above 2× is other work on the cores slowing the one-process runs more). "
        f"Pools (both sides) are spawned inside the timing. Load average when this benchmark started: {load:.1f} "
        "(anything above 0 is other work sharing the cores).",
        "Peak RSS is each child's own high-water mark (VmHWM); with `data.prepare_processes=2` the pool's workers' "
        "own peaks are polled from /proc while they live (at most the figures shown, taken separately; a spawned "
        "worker re-imports this benchmark's child module, and with it TensorFlow, which a worker of `nfp prepare` "
        "does not: those peaked at ≈ 70 MB, 6 such videos by hand). "
        "The few-vs-many comparison runs in one process (`data.prepare_processes=1`), so one figure is all of it. "
        "prepare reads a shard's clips a chunk at a time (at most 64 MB of clips, `_CHUNK_BYTES` in "
        "nfp/data/plan.py) and holds a chunk and its copy: what it holds above the floor follows the shard size up "
        "to that cap, not the number of files.",
        f"One GPU's need is an estimate, not a measurement: section 7's nfp `convlstm_s` trained at {GPU_CLIPS_64} "
        f"clips/s on 20×64×64×1 clips (H200, Keras 3/JAX, bf16); its convolutions scale with the pixels, so at "
        f"{s['out']}×{s['out']} ≈ {fmt(gpu_need)} clips/s ({fmt(gpu_need * clip_mb)} MB/s of uint8 clips). A smaller "
        "model or a faster card needs more; several GPUs on one host need it times their number.",
    ]
    return Section(
        NAME,
        TITLE,
        setup=(
            f"{s['videos']} mp4 files (mpeg4, keyframe every 8, {s['length']} frames of {h}×{w} moving shapes each, "
            f"written with PyAV) on local disk. Timed: the first {s['timed']} files ({s['timed'] * s['length']:,} frames): "
            f"PyAV decoding every frame to an RGB ndarray, and `nfp prepare` (`data.source: video`, clips of "
            f"{s['frames']} frames, `data.clip_stride: {s['frames']}`, `data.frame_size: [{s['out']}, {s['out']}]`, "
            f"`data.channels: 3`), each in a fresh child process, with 1 and 2 processes, {s['runs']} round-robin "
            f"repeats, median. Peak RSS: prepare of "
            f"{s['few']} vs all {s['videos']} files. tf.data: the {n_train} training clips prepared above through "
            f"`make_dataset(..., training=True)` (batch {s['batch']}) vs the same clips in memory, {s['warmup']} "
            f"warm-up and {s['batches']} timed batches, {s['repeats']} round-robin repeats, median."
        ),
        columns=[
            "decoder",
            "frames/s (median)",
            "÷ bare decode, same processes",
            "frames/s per repeat",
            "seconds (median)",
            "peak RSS (MB, highest repeat)",
        ],
        rows=rows,
        tables=[
            (
                "Peak RSS of `nfp prepare` (one process) for few vs many files:",
                [
                    "files",
                    "clips",
                    "MB of clips",
                    "shards",
                    "MB per shard (mean)",
                    "seconds",
                    "peak RSS (MB)",
                    "above the floor (MB)",
                ],
                rss_rows,
            ),
            (
                f"tf.data, {s['frames']}×{s['out']}×{s['out']}×3 uint8 clips → float32 shift pairs:",
                ["pipeline", "clips/s (median)", "MB/s of uint8 clips", "clips/s per repeat"],
                tf_rows,
            ),
        ],
        checks=checks,
        notes=notes,
        quick=quick,
    )


if __name__ == "__main__":
    child_main(_child)
