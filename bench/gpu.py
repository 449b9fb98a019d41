"""GPU figures: the keras_io and convlstm_s presets at 64×64 on configs/multi_gpu.yaml, mixed precision and XLA on/off.

Each variant runs in its own child process (`python -m bench.gpu JSON`): a clean mixed-precision
policy and XLA cache, and a peak-memory figure (`tf.config.experimental.get_memory_info`) that
is that variant's alone. The nfp side is `nfp train` on every visible GPU (MirroredStrategy, as
the config says), then `run_evaluate` 10 → 10 on the test split; the keras-io reference loop
(keras_io preset only) runs on one GPU with the same per-GPU batch, so its comparison is per GPU.
Without a GPU, `--quick` runs the same children on the CPU at tiny sizes (the dry path);
a full run reports the section as not measured.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

from bench.common import REPO, Check, Section, child_main, fmt, nfp_config, ratio_check, run_child

NAME = "gpu"
TITLE = "6. GPU figures: presets at 64×64, mixed precision and XLA"
CONFIG = REPO / "configs/multi_gpu.yaml"
FLAGS = list(itertools.product((False, True), (False, True)))  # (mixed precision, XLA)

SIZES = {
    # steps per epoch per preset. Projected at 20 TFLOP/s sustained: ≈ 3 min per keras_io variant, ≈ 2 min per convlstm_s one
    False: dict(
        presets={"keras_io": 200, "convlstm_s": 100},
        epochs=3,
        eval_clips=500,
        ref_train=3200,
        ref_val=160,
        flags=FLAGS,
        data=["data.source=generate", "data.digit_bank=sklearn"],
        timeout=1800,
    ),
    True: dict(
        presets={"custom": 2},
        epochs=2,
        eval_clips=4,
        ref_train=10,
        ref_val=4,
        flags=[(False, False)],
        data=[
            "data.source=generate",
            "data.digit_bank=sklearn",
            "data.num_clips=24",
            "data.image_size=16",
            "data.digit_size=8",
            "data.frames=6",
            "data.num_shards=2",
        ],
        timeout=600,
    ),
}


def config(args: dict):
    """configs/multi_gpu.yaml with the benchmark's data, preset, flags and budget."""
    preset = [f"model.preset={args['preset']}"] + (
        ["model.filters=[4]", "model.kernel_sizes=[3]"] if args["preset"] == "custom" else []
    )
    return nfp_config(
        [
            *args["data"],
            f"data.dir={args['data_dir']}",
            *preset,
            f"train.epochs={args['epochs']}",
            f"train.steps_per_epoch={args['steps']}",
            f"train.mixed_precision={'true' if args['mixed'] else 'false'}",
            f"train.jit_compile='{'on' if args['xla'] else 'off'}'",
            f"train.output_dir={args['out']}",
            "train.verbose=0",
            "train.images.every_n_epochs=0",
            "tracking.enabled=false",
            f"evaluate.max_clips={args['eval_clips']}",
            "evaluate.split=test",
        ],
        CONFIG,
    )


def _child(args: dict) -> dict:
    """One variant in a fresh process: 'nfp' trains + evaluates, 'reference' runs the keras-io loop."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cfg = config(args)
    out = {
        "gpus": len(gpus),
        "card": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "none (CPU)",
    }
    if args["mode"] == "reference":
        from bench.training import reference_rate

        if args["mixed"] and gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with tf.device("/gpu:0" if gpus else "/cpu:0"):
            out["clips_per_sec"] = reference_rate(
                cfg,
                train=args["ref_train"],
                val=args["ref_val"],
                epochs=args["epochs"] - 1,
                batch=cfg.train.batch_size,
                jit_compile=args["xla"],
            )
        out["peak_gb"] = _peak_gb(gpus)
        return out

    from nfp.inference.evaluate import run_evaluate
    from nfp.training.train import train

    summary = train(cfg)
    out["peak_gb"] = _peak_gb(gpus)
    out["clips_per_sec"] = statistics.median(
        summary["history"]["clips_per_sec"][1:]
    )  # training part, warm-up epoch excluded
    report = run_evaluate(
        cfg, model_uri=summary["last_checkpoint"], split="test", out_dir=str(Path(args["out"]) / "eval")
    )
    out.update(
        mse=report["scores"]["model"]["mse"],
        ssim=report["scores"]["model"]["ssim"],
        copy_last_mse=report["scores"]["copy_last"]["mse"],
        global_batch=cfg.train.batch_size * max(1, len(gpus)),
    )
    return out


def _peak_gb(gpus) -> float | None:
    import tensorflow as tf

    if not gpus:
        return None
    return max(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] for i in range(len(gpus))) / 1e9


def gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def run(quick: bool, workdir: Path) -> Section:
    s = SIZES[quick]
    if not gpu_visible() and not quick:
        return Section(
            NAME,
            TITLE,
            setup="**Not measured: no GPU visible to TensorFlow on this machine.** Run `python -m bench --gpu` on a GPU VM.",
            columns=["preset", "clips/s"],
            rows=[[p, "not measured"] for p in s["presets"]],
            checks=[Check("mixed precision + XLA / float32 (clips/s)", None, "none", None)],
        )
    from nfp.data.prepare import prepare

    base = {
        "data": s["data"],
        "data_dir": str(workdir / "data"),
        "epochs": s["epochs"],
        "eval_clips": s["eval_clips"],
        "ref_train": s["ref_train"],
        "ref_val": s["ref_val"],
    }
    cfg = config({**base, "preset": "tiny", "steps": 1, "mixed": False, "xla": False, "out": str(workdir)})
    prepare(cfg.data, progress=False)

    results, failures = {}, []
    for preset, steps in s["presets"].items():
        modes = ["nfp", "reference"] if preset in ("keras_io", "custom") else ["nfp"]
        for (mixed, xla), mode in itertools.product(s["flags"], modes):
            key = (preset, mixed, xla, mode)
            args = {
                **base,
                "preset": preset,
                "steps": steps,
                "mixed": mixed,
                "xla": xla,
                "mode": mode,
                "out": str(workdir / f"{preset}-{int(mixed)}{int(xla)}-{mode}"),
            }
            try:  # one variant failing (e.g. out of memory, XLA compile timeout) must not lose the others
                results[key] = run_child("bench.gpu", args, timeout=s["timeout"])[0]
            except RuntimeError as err:
                failures.append(f"{preset}, mixed={mixed}, XLA={xla}, {mode}: {str(err).splitlines()[0]}")

    any_result = next(iter(results.values()), {"card": "unknown", "gpus": 0})
    rows, checks = [], []
    for preset in s["presets"]:
        fp32 = results.get((preset, False, False, "nfp"), {}).get("clips_per_sec")
        for mixed, xla in s["flags"]:
            r = results.get((preset, mixed, xla, "nfp"))
            ref = results.get((preset, mixed, xla, "reference"), {}).get("clips_per_sec")
            if r is None:
                rows.append([f"`{preset}`", _on(mixed), _on(xla), "failed", "", "", "", "", "", ""])
                continue
            per_gpu = r["clips_per_sec"] / max(1, r["gpus"])
            rows.append(
                [
                    f"`{preset}`",
                    _on(mixed),
                    _on(xla),
                    r["clips_per_sec"],
                    r["clips_per_sec"] / fp32 if fp32 else "",
                    "n/a (CPU)" if r["peak_gb"] is None else r["peak_gb"],
                    r["mse"],
                    r["ssim"],
                    r["copy_last_mse"],
                    "" if ref is None else f"{fmt(ref)} ({per_gpu / ref:.2f}×)",
                ]
            )
            if ref:
                checks.append(
                    ratio_check(
                        f"`{preset}` mixed={_on(mixed)} XLA={_on(xla)}: `nfp train` per GPU / keras-io loop",
                        per_gpu,
                        ref,
                        1.0,
                        "clips/s",
                    )
                )
        best = max(
            (
                results[(preset, m, x, "nfp")]["clips_per_sec"]
                for m, x in s["flags"]
                if (preset, m, x, "nfp") in results
            ),
            default=None,
        )
        if best and fp32:
            checks.append(ratio_check(f"`{preset}` fastest variant / float32 without XLA", best, fp32, None, "clips/s"))
    return Section(
        NAME,
        TITLE,
        setup=(
            f"{any_result['gpus']}× {any_result['card']}. `configs/multi_gpu.yaml` (MirroredStrategy over all GPUs, batch "
            f"{cfg.train.batch_size} per GPU, {cfg.train.schedule.name} LR with warm-up, LR scaled by replicas) on "
            f"{cfg.data.num_clips:,} clips generated from scikit-learn digits ({cfg.data.frames}×{cfg.data.image_size}×"
            f"{cfg.data.image_size}; the config's real download needs the network), {s['epochs']} epochs of "
            f"{', '.join(f'{n} steps for `{p}`' for p, n in s['presets'].items())}. clips/s: the training part of epochs "
            f"2..{s['epochs']} (EpochStats); peak memory: the largest per-GPU peak (`tf.config.experimental.get_memory_info`); "
            f"then MSE/SSIM of a {cfg.evaluate.context_frames} → {cfg.evaluate.predict_frames} rollout on {s['eval_clips']} "
            "test clips (OpenSTL metrics). The keras-io loop (numpy → model.fit, same per-GPU batch) runs on one GPU."
        ),
        columns=[
            "preset",
            "mixed precision",
            "XLA",
            "clips/s",
            "× float32 no-XLA",
            "peak GPU GB",
            "MSE",
            "SSIM",
            "copy-last MSE",
            "keras-io loop clips/s (nfp per GPU ÷ it)",
        ],
        rows=rows,
        checks=checks,
        notes=failures
        + (
            []
            if gpu_visible()
            else ["CPU dry path: no GPU visible, so this ran the GPU benchmark's code on the CPU at tiny sizes."]
        ),
        quick=quick,
    )


def _on(flag: bool) -> str:
    return "on" if flag else "off"


if __name__ == "__main__":
    child_main(_child)
