"""Quality per CPU-second: every model preset trained for the same wall-clock budget on the same clips, scored 10 → 10.

Each preset is nfp's model, loss (`train.loss: auto`, plus its family's loss terms), optimizer and input pipeline
(`make_dataset`: the shift protocol for the autoregressive ConvLSTM and PredRNN-V2 presets, 10 → 10 pairs for the
direct SimVP and PredFormer ones, each with its preset's recipe; a OneCycle schedule runs over the steps the budget
is estimated to hold), trained with `model.fit` for the same seconds of training time on identical
generated clips, then rolled out 10 → 10 on held-out test clips and scored by `nfp.inference.scoring`
(OpenSTL's metrics) next to the copy-last-frame and mean-frame baselines. A learning curve (test
MSE against training seconds) is taken along the way; evaluation time is not training time.

Then colour: `tiny` trained the same way (its own, shorter budget) on the generated colour set at the same size and
split (digits over moving crops of scikit-learn's sample photos, RGB), scored against that set's own baselines.

Then the learning-rate schedule side by side: `tiny` trained twice from the same weights on the same batches for the
same steps, once with the per-epoch cosine nfp had (a LearningRateScheduler callback, written here as the baseline)
and once with `nfp.models.optim.build_optimizer`'s per-step CosineDecay, both scored by the same test rollout.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.common import Check, Section, fmt, nfp_config, ratio_check

NAME = "quality"
TITLE = "5. Quality per CPU-second: presets side by side, 10 → 10 rollout vs the baselines"
TARGETS = {"copy_last": 0.40, "mean_frame": 0.60}  # best preset's MSE ≤ these × the baseline's
SCHEDULE_TARGET = 1.05  # per-step cosine MSE ≤ this × the per-epoch one's: the noise between two runs
SIMVP_TARGET = 0.8  # the best SimVP preset's MSE ≤ this × `tiny`'s, at equal CPU-seconds (#31)

SIZES = {
    False: dict(
        image=32,
        digit=14,
        frames=20,
        train=4000,
        val=64,
        test=64,  # the same 64 for every preset; a keras-cell rollout costs ten passes per clip on the CPU
        batch=16,
        budget=600,
        curve=[150, 300, 600],
        timed_steps=20,  # the steps that time a OneCycle preset's step (step_seconds)
        context=10,
        presets={
            "tiny": [],
            "convlstm_s": [],
            "keras_io": [],
            "simvp_tiny": [],
            "tau_tiny": [],
            "predformer_tiny": [],
            "predrnn_v2_tiny": [],
        },
        colour=dict(budget=300, curve=[150, 300]),  # tiny only: the best grey preset per CPU-second so far
        schedule=dict(learning_rate=0.003, epochs=6, steps_per_epoch=40),  # tiny twice: ~3 min on 2 cores
    ),
    True: dict(
        image=16,
        digit=8,
        frames=6,
        train=24,
        val=4,
        test=8,
        batch=4,
        budget=1,
        curve=[0.5, 1],
        timed_steps=3,
        context=3,
        presets={
            "tiny": ["model.filters=[4]", "model.kernel_sizes=[3]"],
            "keras_io": ["model.filters=[4]", "model.kernel_sizes=[3]"],
            "tau_tiny": ["model.spatial_channels=4", "model.temporal_channels=8"],
            "predformer_tiny": ["model.width=16", "model.heads=2", "model.blocks=1"],
            "predrnn_v2_tiny": ["model.filters=[4, 4]", "model.kernel_sizes=[3, 3]"],
        },
        colour=dict(budget=1, curve=[0.5, 1]),
        schedule=dict(learning_rate=0.003, epochs=3, steps_per_epoch=2),
    ),
}


COLOUR = ["data.background=photos", "data.channels=3"]  # the generated colour set: digits over moving photo crops


def config(workdir: Path, s: dict, preset: str, extra: list[str], *, data: list[str] = (), data_dir: str = "data"):
    """The benchmark's Config: `s`'s generated clips in workdir/data_dir (`data`: more data.* overrides), `preset`
    with `extra` model/train overrides."""
    k = s["context"]
    return nfp_config([
        "data.source=generate", "data.digit_bank=sklearn", f"data.image_size={s['image']}", f"data.digit_size={s['digit']}",
        f"data.frames={s['frames']}", f"data.num_clips={s['train'] + s['val'] + s['test']}", "data.num_shards=4",
        f"data.split.train={s['train']}", f"data.split.val={s['val']}", f"data.split.test={s['test']}",
        *data, f"data.dir={workdir / data_dir}", f"data.context_frames={k}", f"data.predict_frames={k}",
        f"model.preset={preset}", *extra,
        f"train.batch_size={s['batch']}", "evaluate.protocol=rollout", f"evaluate.context_frames={k}",
        f"evaluate.predict_frames={k}", "evaluate.batch_size=32", "tracking.enabled=false",
    ])  # fmt: skip


def seeded_model(cfg):
    """cfg's uncompiled model, its initial weights those of train.seed (the same at every call)."""
    import keras

    from nfp.models import build_model

    keras.utils.set_random_seed(cfg.train.seed)
    d = cfg.data
    return build_model(
        cfg.model, frame_shape=d.frame_shape, context_frames=d.context_frames, predict_frames=d.predict_frames,
        scheduled_sampling=cfg.train.scheduled_sampling, sampling_from=cfg.evaluate.context_frames,
    )  # fmt: skip


def rollout_scores(model, cfg, manifest) -> dict:
    """evaluate_model's result for the held-out test clips, cfg.evaluate's rollout."""
    from nfp.data.pipeline import clip_batches
    from nfp.inference.scoring import evaluate_model

    e = cfg.evaluate
    return evaluate_model(model, clip_batches(cfg.data, manifest, "test", e.batch_size), protocol="rollout",
                          context_frames=e.context_frames, predict_frames=e.predict_frames)  # fmt: skip


def train_for(cfg, manifest, budget_s: float, curve_s: list[float], timed_steps: int) -> dict:
    """Fit cfg's model for `budget_s` seconds of training; score the test rollout at each of `curve_s` seconds. A
    OneCycle schedule's length: the steps `budget_s` holds at the pace of `timed_steps` steps of a copy."""
    import dataclasses

    import keras

    from nfp.data.pipeline import make_dataset
    from nfp.models import loss_terms
    from nfp.models.optim import build_loss, build_optimizer

    data = make_dataset(cfg.data, manifest, "train", cfg.train.batch_size, training=True)
    t = cfg.train
    if t.schedule.name == "onecycle":  # its length: the steps the budget holds, from a timed run of a copy
        t = dataclasses.replace(t, epochs=max(1, int(budget_s / step_seconds(cfg, data, timed_steps))))
    model = seeded_model(cfg)
    model.compile(optimizer=build_optimizer(t, 1, steps_per_epoch=1), loss=build_loss(t, loss_terms(cfg.model)))
    model.optimizer.build(model.trainable_variables)  # as nfp train does: the first step traced once

    class StopAt(keras.callbacks.Callback):
        """Stops fit once the training seconds reach the next point of the curve (the first batch's tracing excluded)."""

        def __init__(self):
            super().__init__()
            self.trained, self.steps, self.until = 0.0, 0, 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if self.steps:  # the very first step traces the graph: not training time
                self.trained += time.perf_counter() - self.t0
            self.steps += 1
            if self.trained >= self.until:
                self.model.stop_training = True

    clock, curve = StopAt(), []
    for point in curve_s:
        clock.until = point
        model.fit(data, epochs=10**6, steps_per_epoch=50, callbacks=[clock], verbose=0)
        curve.append((clock.trained, clock.steps, rollout_scores(model, cfg, manifest)))
    return {
        "params": model.count_params(),
        "curve": curve,
        "clips_per_s": clock.steps * cfg.train.batch_size / clock.trained,
    }


def step_seconds(cfg, data, steps: int = 20) -> float:
    """Seconds per training step of cfg's model on `data` (a throw-away copy, the first, tracing step excluded)."""
    from nfp.models import loss_terms
    from nfp.models.optim import build_loss

    model = seeded_model(cfg)
    model.compile(optimizer="adam", loss=build_loss(cfg.train, loss_terms(cfg.model)))
    model.optimizer.build(model.trainable_variables)  # the first step traced once, as in train_for
    model.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def per_epoch_cosine(epoch: int, train_cfg) -> float:
    """The baseline: nfp's LR of 0-based `epoch` before the per-step schedules, set by a callback at each epoch."""
    s, base = train_cfg.schedule, train_cfg.learning_rate
    if epoch < s.warmup_epochs:
        return base * (epoch + 1) / s.warmup_epochs
    span = max(1, train_cfg.epochs - s.warmup_epochs)
    return s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * min(epoch - s.warmup_epochs, span) / span))


def compare_schedules(cfg, manifest, steps_per_epoch: int) -> dict:
    """cfg's model fit twice, same weights, batches and steps: {"per-epoch" | "per-step": (steps, mean LR, test scores)}."""
    import keras
    import tensorflow as tf

    from nfp.data.pipeline import make_dataset
    from nfp.models.optim import build_loss, build_optimizer

    t = cfg.train
    in_order = tf.data.Options()
    in_order.deterministic = True  # make_dataset trains on batches in the order they are ready: fixed here
    out = {}
    for name in ("per-epoch", "per-step"):
        model = seeded_model(cfg)  # seeds the data's shuffle too: the same batches, in the same order
        if name == "per-epoch":  # nfp's old optimizer: Adam at a float LR that the callback moves
            optimizer = keras.optimizers.Adam(learning_rate=t.learning_rate)
            callbacks = [keras.callbacks.LearningRateScheduler(lambda epoch: per_epoch_cosine(epoch, t))]
        else:
            optimizer, callbacks = build_optimizer(t, 1, steps_per_epoch), []
        model.compile(optimizer=optimizer, loss=build_loss(t))
        model.optimizer.build(model.trainable_variables)  # the first step traced once, as in train_for
        data = make_dataset(cfg.data, manifest, "train", t.batch_size, training=True).with_options(in_order)
        lrs = []  # the LR each step trained at
        record = keras.callbacks.LambdaCallback(
            on_train_batch_begin=lambda b, logs, lrs=lrs, opt=optimizer: lrs.append(float(opt.learning_rate))
        )
        model.fit(data, epochs=t.epochs, steps_per_epoch=steps_per_epoch, callbacks=[*callbacks, record], verbose=0)
        out[name] = (len(lrs), sum(lrs) / len(lrs), rollout_scores(model, cfg, manifest)["scores"]["model"])
    return out


def score_rows(results: dict, baselines: dict) -> list[list]:
    """Table rows: each preset's final test scores, then the baselines', with the ratios of MSE to the baselines'."""
    copy_mse, mean_mse = baselines["copy_last"]["mse"], baselines["mean_frame"]["mse"]
    rows = []
    for preset, (cfg, r) in results.items():
        m = cfg.model
        scores = r["curve"][-1][2]["scores"]["model"]
        rows.append([
            f"`{preset}`", f"{describe(m)}, {m.output_activation} / {cfg.train.loss}",
            f"{r['params']:,}", r["clips_per_s"], r["curve"][-1][1], scores["mse"], scores["mae"], scores["ssim"], scores["psnr"],
            scores["mse"] / copy_mse, scores["mse"] / mean_mse,
        ])  # fmt: skip
    for name in ("copy_last", "mean_frame"):
        b = baselines[name]
        rows.append([name.replace("_", "-"), "baseline", "—", "—", "—", b["mse"], b["mae"], b["ssim"], b["psnr"],
                     b["mse"] / copy_mse, b["mse"] / mean_mse])  # fmt: skip
    return rows


def describe(model_cfg) -> str:
    """The model in a few words, by family (nfp.models.describe)."""
    from nfp.models import describe as family_words

    return family_words(model_cfg)


def baseline_checks(what: str, mse: float, baselines: dict) -> list[Check]:
    """`what`'s MSE over each baseline's, against TARGETS."""
    return [
        Check(f"{what} MSE / {name.replace('_', '-')} MSE", mse / baselines[name]["mse"], f"≤ {target:g}×",
              mse / baselines[name]["mse"] <= target, f"{fmt(mse)} / {fmt(baselines[name]['mse'])}")
        for name, target in TARGETS.items()
    ]  # fmt: skip


def run(quick: bool, workdir: Path) -> Section:
    from nfp.data.prepare import prepare
    from nfp.models import is_direct

    s = SIZES[quick]
    results = {}
    manifest = None
    for preset, extra in s["presets"].items():
        cfg = config(workdir, s, preset, extra)
        manifest = manifest or prepare(cfg.data, progress=False)
        results[preset] = (cfg, train_for(cfg, manifest, s["budget"], s["curve"], s["timed_steps"]))
    c = s["colour"]
    colour_cfg = config(workdir, s, "tiny", s["presets"]["tiny"], data=COLOUR, data_dir="data_colour")
    colour = train_for(colour_cfg, prepare(colour_cfg.data, progress=False), c["budget"], c["curve"], s["timed_steps"])
    sched = s["schedule"]
    sched_cfg = config(workdir, s, "tiny", [*s["presets"]["tiny"], f"train.learning_rate={sched['learning_rate']}",
                       f"train.epochs={sched['epochs']}", "train.schedule.name=cosine", "train.schedule.warmup_epochs=1"])  # fmt: skip
    schedules = compare_schedules(sched_cfg, manifest, sched["steps_per_epoch"])

    final = {p: r["curve"][-1][2] for p, (_, r) in results.items()}
    baselines = next(iter(final.values()))["scores"]
    best = min(final, key=lambda p: final[p]["scores"]["model"]["mse"])
    rows = score_rows(results, baselines)
    colour_final = colour["curve"][-1][2]["scores"]
    colour_rows = score_rows({"tiny": (colour_cfg, colour)}, colour_final)
    colour_curve = ", ".join(
        f"{fmt(p[2]['scores']['model']['mse'])} after {t} s" for t, p in zip(c["curve"], colour["curve"])
    )
    curve_rows = [
        [f"`{p}`", *(fmt(point[2]["scores"]["model"]["mse"]) for point in r["curve"])] for p, (_, r) in results.items()
    ]
    best_mse = final[best]["scores"]["model"]["mse"]
    checks = baseline_checks(f"best preset (`{best}`)", best_mse, baselines)
    checks += baseline_checks("colour: `tiny`", colour_final["model"]["mse"], colour_final)
    direct = [p for p in final if is_direct(results[p][0].model)]
    if direct and "tiny" in final:
        best_direct = min(direct, key=lambda p: final[p]["scores"]["model"]["mse"])
        checks.append(ratio_check(f"best direct (SimVP, PredFormer) preset (`{best_direct}`) MSE / `tiny` MSE, equal CPU-seconds",
                                  final[best_direct]["scores"]["model"]["mse"], final["tiny"]["scores"]["model"]["mse"],
                                  SIMVP_TARGET, "MSE", higher_is_better=False))  # fmt: skip
    epoch_scores, step_scores = schedules["per-epoch"][2], schedules["per-step"][2]
    schedule_rows = [
        [
            f"per-{when}: {how}",
            steps,
            f"{mean_lr:.2e}",
            scores["mse"],
            scores["ssim"],
            scores["mse"] / epoch_scores["mse"],
        ]
        for (when, how), (steps, mean_lr, scores) in zip(
            [("epoch", "LearningRateScheduler callback (before)"), ("step", "`build_optimizer`'s CosineDecay (now)")],
            schedules.values(),
        )
    ]
    checks.append(ratio_check("per-step cosine MSE / per-epoch cosine MSE (tolerance: the noise between two runs)",
                              step_scores["mse"], epoch_scores["mse"], SCHEDULE_TARGET, "MSE", higher_is_better=False))  # fmt: skip
    columns = ["preset", "model", "params", "clips/s", "steps", "MSE", "MAE", "SSIM", "PSNR (dB)", "÷ copy-last MSE",
               "÷ mean-frame MSE"]  # fmt: skip
    return Section(
        NAME, TITLE,
        setup=(
            f"Generated Moving MNIST (scikit-learn digits, {s['digit']} px on {s['image']}×{s['image']}, {s['frames']} frames, 2 digits): "
            f"{s['train']:,} training clips, {s['test']} held-out test clips, identical for every preset. Each preset: nfp's model, "
            f"`train.loss: auto`, batch {s['batch']}, through `make_dataset`: the ConvLSTM presets Adam 0.001 (constant), "
            "shift protocol; the direct presets their recipe (SimVP's Adam, PredFormer's AdamW with weight decay 0.01; "
            "OneCycle to their peak over the steps the budget was estimated to hold; TAU's differential divergence "
            f"term), {s['context']} → {s['context']} pairs; "
            f"`model.fit` for {s['budget']} s of training time on this CPU (the first step's tracing and "
            f"every evaluation excluded); then {s['context']} context frames → {s['context']} predicted, "
            "autoregressively or in one block (`nfp.inference.scoring`, OpenSTL metrics: MSE/MAE summed per frame over H×W)."
        ),
        columns=columns,
        rows=rows,
        tables=[
            ("Learning curve: test MSE after … s of training:", ["preset", *(f"{t} s" for t in s["curve"])], curve_rows),
            (
                f"Colour: `tiny`{' (quick: ' + ', '.join(s['presets']['tiny']) + ')' if quick else ''} on the generated "
                f"colour set (`{' '.join(COLOUR)}`; the same size, frames and split sizes as above), "
                f"trained the same way for {c['budget']} s, then the same {s['context']} → {s['context']} rollout; "
                f"MSE/MAE summed per frame over H×W×3, so compare them only within this table. "
                f"Test MSE along the way: {colour_curve}.",
                columns, colour_rows,
            ),
            (
                f"Learning-rate schedule: `tiny`{' (quick: ' + ', '.join(s['presets']['tiny']) + ')' if quick else ''} "
                f"trained twice from the same initial weights on the same batches, Adam, `train.schedule.name=cosine`, "
                f"`warmup_epochs=1`, `train.learning_rate={sched['learning_rate']:g}`, `min_lr=0`, {sched['epochs']} "
                f"epochs × {sched['steps_per_epoch']} steps; the same test rollout. Per-epoch: the LR set at each "
                "epoch's start (warm-up epoch e at base×(e+1)/W, so with W = 1 the first epoch runs at the base LR), "
                "then cosine; per-step: the linear warm-up from base/W to base over W epochs' steps (W = 1: the base "
                "LR, as per-epoch), then cosine at every step.",
                ["schedule", "steps", "mean LR", "MSE", "SSIM", "÷ per-epoch MSE"],
                schedule_rows,
            ),
        ],
        checks=checks,
        notes=[
            f"MSE here is summed over {s['image']}×{s['image']} pixels: not comparable with OpenSTL's 64×64 figures "
            "(4× as many pixels); the ratios to the baselines are.",
            f"The colour set is nfp's `data.source=generate` with `{' '.join(COLOUR)}`: the same "
            "white digits, alpha-blended over a frame-sized crop of one of scikit-learn's two sample photos (china, "
            "flower; shorter side resized to twice the frame side) that moves in a straight line at half the digits' step and "
            "bounces off the photo's edges, so copy-last is wrong wherever the background moved too.",
            "GPU figures (64×64, nfp's presets next to OpenSTL's own ConvLSTM-S at equal GPU-seconds) are in section 7.",
            "Schedule table: mean LR is the mean over the steps of the LR each one trained at, recorded by a callback.",
        ],
        quick=quick,
    )  # fmt: skip
