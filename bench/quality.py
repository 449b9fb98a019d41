"""Quality on CPU: the quickstart-scale model trained for a fixed budget, then 10 → 10 rollout vs copy-last-frame.

Training is `nfp train` (shift protocol: frames 0..18 → 1..19) on generated clips; evaluation is
`nfp evaluate`'s path (`run_evaluate`, OpenSTL metrics) on the held-out test split: 10 context
frames in, 10 predicted autoregressively, scored next to the copy-last-frame and mean-frame baselines.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Check, Section, fmt, nfp_config, ratio_check

NAME = "quality"
TITLE = "5. Quality on CPU: 10 → 10 rollout vs copy-last-frame"
TARGET = 0.7  # model MSE ≤ 0.7 × copy-last MSE, i.e. ≥ 30% below
BUDGET_S = 600.0

SIZES = {
    # 4 epochs × 1,600 clips ≈ 5-7 min of training on 2 cores (tiny at 32×32×19 ran 15-25 clips/s there)
    False: dict(
        image=32,
        digit=14,
        frames=20,
        train=1600,
        val=200,
        test=200,
        epochs=4,
        batch=8,
        lr=0.002,
        preset=["model.preset=tiny"],
        context=10,
    ),
    True: dict(
        image=16,
        digit=8,
        frames=6,
        train=24,
        val=8,
        test=8,
        epochs=1,
        batch=4,
        lr=0.002,
        preset=["model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]"],
        context=3,
    ),
}


def config(workdir: Path, s: dict):
    k = s["context"]
    return nfp_config(
        [
            "data.source=generate",
            "data.digit_bank=sklearn",
            f"data.image_size={s['image']}",
            f"data.digit_size={s['digit']}",
            f"data.frames={s['frames']}",
            f"data.num_clips={s['train'] + s['val'] + s['test']}",
            "data.num_shards=4",
            f"data.split.train={s['train']}",
            f"data.split.val={s['val']}",
            f"data.split.test={s['test']}",
            f"data.dir={workdir / 'data'}",
            "data.protocol=shift",
            *s["preset"],
            f"train.epochs={s['epochs']}",
            f"train.batch_size={s['batch']}",
            f"train.learning_rate={s['lr']}",
            "train.schedule.name=cosine",
            "train.schedule.warmup_epochs=1",
            "train.verbose=0",
            f"train.output_dir={workdir / 'run'}",
            "train.images.every_n_epochs=0",
            "distribute.strategy=default",
            "tracking.enabled=false",
            "evaluate.protocol=rollout",
            f"evaluate.context_frames={k}",
            f"evaluate.predict_frames={k}",
            "evaluate.split=test",
            "evaluate.batch_size=16",
        ]
    )


def black_frames(cfg, clips: int) -> tuple[dict, dict]:
    """OpenSTL metrics of predicting black frames for the evaluated clips: (scores, per-frame curves)."""
    import numpy as np

    from nfp.data.manifest import load_manifest
    from nfp.data.pipeline import read_clips
    from nfp.metrics import FrameMetrics

    k, n = cfg.evaluate.context_frames, cfg.evaluate.predict_frames
    truth = (
        read_clips(cfg.data, load_manifest(cfg.data.dir), "test", clips)[:, k : k + n, ..., None].astype(np.float32)
        / 255.0
    )
    acc = FrameMetrics()
    acc.update(truth, np.zeros_like(truth))
    return acc.result(), acc.per_frame()


def run(quick: bool, workdir: Path) -> Section:
    from nfp.data.prepare import prepare
    from nfp.evaluate import run_evaluate
    from nfp.train import train

    s = SIZES[quick]
    cfg = config(workdir, s)
    prepare(cfg.data, progress=False)
    t0 = time.perf_counter()
    summary = train(cfg)
    train_s = time.perf_counter() - t0
    model_uri = summary["best_checkpoint"] or summary["last_checkpoint"]
    t0 = time.perf_counter()
    report = run_evaluate(cfg, model_uri=model_uri, split="test", out_dir=str(workdir / "eval"))
    eval_s = time.perf_counter() - t0

    scores, curves = report["scores"], {**report["per_frame"]}
    scores["black"], curves["black"] = black_frames(cfg, report["clips"])
    labels = {
        "model": f"nfp `{cfg.model.preset}` model",
        "copy_last": "copy last frame",
        "mean_frame": "mean of context frames",
        "black": "all-black frames (for scale)",
    }
    rows = [[labels[p], *(scores[p][m] for m in ("mse", "mae", "ssim", "psnr"))] for p in labels]
    frames = [f"t+{i + 1}" for i in range(len(report["frames"]))]
    curve_rows = [[labels[p], *(fmt(v) for v in curves[p]["mse"])] for p in ("model", "copy_last", "black")]
    losses = summary["history"].get("loss", [])
    return Section(
        NAME,
        TITLE,
        setup=(
            f"Generated Moving MNIST (scikit-learn digits, {s['digit']} px on {s['image']}×{s['image']}, {s['frames']} frames, "
            f"2 digits): {s['train']:,} train / {s['val']} val / {s['test']} held-out test clips. `nfp train` with the "
            f"`{cfg.model.preset}` model ({s['epochs']} epoch(s), batch {s['batch']}, Adam {s['lr']:g} with cosine schedule "
            f"and 1 warm-up epoch, BCE, shift protocol), then `nfp evaluate`'s `run_evaluate` on the test split: "
            f"{s['context']} context frames → {s['context']} predicted autoregressively, OpenSTL metrics (MSE/MAE per frame "
            f"summed over H×W, SSIM, PSNR)."
        ),
        columns=["predictor", "MSE", "MAE", "SSIM", "PSNR (dB)"],
        rows=rows,
        tables=[("MSE per predicted frame:", ["predictor", *frames], curve_rows)],
        checks=[
            ratio_check(
                "model MSE / copy-last-frame MSE",
                scores["model"]["mse"],
                scores["copy_last"]["mse"],
                TARGET,
                "MSE",
                higher_is_better=False,
            ),
            Check(
                f"training time / {BUDGET_S:.0f} s budget",
                train_s / BUDGET_S,
                "≤ 1×",
                train_s <= BUDGET_S,
                f"{train_s:.0f} s training, {eval_s:.0f} s evaluation",
            ),
        ],
        notes=[
            f"Training loss by epoch: {', '.join(fmt(v) for v in losses)}; evaluated checkpoint: "
            f"{'best (val_loss)' if summary['best_checkpoint'] else 'last'}.",
            f"All-black frames need no model: on these clips they score {scores['black']['mse'] / scores['copy_last']['mse']:.2f}× "
            "copy-last's MSE (over a long horizon the digits move away from where copy-last draws them): the floor a model must beat.",
            f"MSE here is summed over {s['image']}×{s['image']} pixels: not comparable with OpenSTL's 64×64 figures "
            "(which sum over 4× as many pixels).",
        ],
        quick=quick,
    )
