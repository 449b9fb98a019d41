"""Data prep: `nfp prepare` on generated clips — clips/s, MB/s next to a plain np.save of the same bytes, peak RSS.

Each side runs in its own child process (`python -m bench.data_prep JSON`), so the peak RSS is
prepare's alone: the child's own VmHWM (bench.common.run_child says why not ru_maxrss).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Check, Section, child_main, nfp_config, ratio_check, run_child

NAME = "data_prep"
TITLE = "3. Data prep: `nfp prepare` vs np.save, peak memory"
RSS_BUDGET_MB = 1024.0

SIZES = {
    False: dict(clips=10000, image=64, frames=20, digit=28, timeout=3600),
    True: dict(clips=40, image=16, frames=6, digit=8, timeout=300),
}


def _data_cfg(args: dict):
    return nfp_config(
        [
            "data.source=generate",
            "data.digit_bank=sklearn",
            f"data.num_clips={args['clips']}",
            f"data.image_size={args['image']}",
            f"data.digit_size={args['digit']}",
            f"data.frames={args['frames']}",
            f"data.dir={args['dir']}",
        ]
        + (["data.num_shards=2"] if args["clips"] < 1000 else [])
    ).data


def _child(args: dict) -> dict:
    """In a fresh process: 'prepare' times prepare(); 'npsave' times np.save of the prepared clips; 'floor' only imports."""
    import numpy as np
    import tensorflow  # noqa: F401  one-off import cost, outside every timing; its memory is in every RSS figure

    cfg = _data_cfg(args)
    if args["mode"] == "floor":
        from nfp.data import pipeline, prepare  # noqa: F401

        return {}
    if args["mode"] == "prepare":
        from nfp.data.prepare import prepare

        t0 = time.perf_counter()
        manifest = prepare(cfg, progress=False)
        seconds = time.perf_counter() - t0
        shards = [s for split in manifest.splits for s in manifest.shards(split)]
        return {"seconds": seconds, "disk_bytes": sum(s["bytes"] for s in shards), "shards": len(shards)}

    from nfp.data.manifest import load_manifest
    from nfp.data.pipeline import read_clips

    manifest = load_manifest(cfg.dir)
    clips = np.concatenate([read_clips(cfg, manifest, split, manifest.count(split)) for split in manifest.splits])
    path = Path(args["dir"]) / "clips.npy"
    t0 = time.perf_counter()
    np.save(path, clips)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "disk_bytes": path.stat().st_size}


def run(quick: bool, workdir: Path) -> Section:
    s = SIZES[quick]
    args = {**{k: v for k, v in s.items() if k != "timeout"}, "dir": str(workdir / "data")}
    prep, prep_rss = run_child("bench.data_prep", {**args, "mode": "prepare"}, timeout=s["timeout"])
    save, save_rss = run_child("bench.data_prep", {**args, "mode": "npsave"}, timeout=s["timeout"])
    # The import floor explains the RSS figures; --quick skips it (one more TensorFlow start).
    floor_rss = (
        float("nan") if quick else run_child("bench.data_prep", {**args, "mode": "floor"}, timeout=s["timeout"])[1]
    )
    mb = s["clips"] * s["frames"] * s["image"] ** 2 / 1e6  # raw uint8 clip bytes
    rows = [
        [
            "`nfp prepare` (generate + shard + sha256 + manifest)",
            s["clips"] / prep["seconds"],
            mb / prep["seconds"],
            prep["seconds"],
            prep["disk_bytes"] / 1e6,
            prep_rss,
        ],
        [
            "np.save of the same uint8 clips (write only)",
            s["clips"] / save["seconds"],
            mb / save["seconds"],
            save["seconds"],
            save["disk_bytes"] / 1e6,
            save_rss,
        ],
        ["floor: Python + TensorFlow + nfp.data imported, nothing done", "", "", "", "", floor_rss],
    ]
    checks = [
        ratio_check("`nfp prepare` MB/s / np.save MB/s", mb / prep["seconds"], mb / save["seconds"], None, "MB/s"),
        Check(
            f"`nfp prepare` peak RSS / {RSS_BUDGET_MB:.0f} MB budget",
            prep_rss / RSS_BUDGET_MB,
            "≤ 1×",
            prep_rss <= RSS_BUDGET_MB,
            f"{prep_rss:,.0f} MB",
        ),
    ]
    return Section(
        NAME,
        TITLE,
        setup=(
            f"{s['clips']:,} Moving MNIST clips generated from scikit-learn digits ({s['digit']} px) at "
            f"{s['frames']}×{s['image']}×{s['image']} uint8 = {mb:,.1f} MB of clip bytes, default split (0.8/0.1/0.1) "
            f"and shard sizes, uncompressed, local disk. Each side in a fresh child process; peak RSS is that child's "
            "own high-water mark (VmHWM). np.save writes the clips read back from the shards "
            "(read time not counted)."
        ),
        columns=["writer", "clips/s", "MB/s", "seconds", "MB on disk", "peak RSS (MB)"],
        rows=rows,
        checks=checks,
        notes=[
            f"`nfp prepare` wrote {prep['shards']} shards. Its time includes rendering the clips, which np.save does not do; "
            "TensorFlow is imported before either clock starts (the floor row shows what that import costs in memory).",
            "Neither side fsyncs: both figures are writes into the page cache as a user sees them.",
        ],
        quick=quick,
    )


if __name__ == "__main__":
    child_main(_child)
