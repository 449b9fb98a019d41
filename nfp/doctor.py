"""`nfp doctor`: a preflight for a new GPU VM. A few dozen training steps of the config's model on the devices
this machine has, on random clips of the config's shape (no data needed), and a few lines on how it went:
devices, precision and XLA chosen, compile time, step time, clips/s per device, peak device memory and model
FLOP utilisation. A failure is one line naming what failed (strategy, XLA, precision, out of memory at batch N).

It checks this machine only: under distribute.strategy multi_worker (or auto in a multi-worker TF_CONFIG) it
runs MirroredStrategy over the local GPUs, the part of a multi-worker job each VM runs.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import statistics
import time

import keras

from nfp import storage
from nfp.distribute import devices
from nfp.errors import NfpError, TrainingError, tf_error_line


def run_doctor(cfg, *, steps: int = 30, out: str | None = None) -> dict:
    """Train `steps` steps of cfg's model on random clips; → the report (dict), its lines also written to `out`
    (default <train.output_dir>/doctor/<host>.txt, which nfp train logs to its run)."""
    if steps < 2:
        raise TrainingError(f"--steps: got {steps}, expected >= 2 (the first step compiles)")
    import numpy as np
    import tensorflow as tf

    from nfp import models
    from nfp.distribute import make_strategy, strategy_name
    from nfp.rundir import RunDir
    from nfp.training.train import compiled_model

    given, out = out, out or storage.join(RunDir(cfg.train.output_dir).doctor, f"{_host()}.txt")
    _check_report_path(out, given=given is not None)  # before the steps, not after them
    seen = devices.visible_devices()
    gpus = [d for d in seen if d.kind == "GPU"]
    local = _local(cfg.distribute.strategy, gpus=len(gpus))
    try:
        strategy = make_strategy(dataclasses.replace(cfg.distribute, strategy=local))
    except NfpError:
        raise
    except Exception as err:  # noqa: BLE001 -- whatever TF raises while making the strategy is the cause
        raise TrainingError(f"strategy {local}: could not be made on {_host()} ({tf_error_line(err)})") from None
    replicas = strategy.num_replicas_in_sync
    t, d = cfg.train, cfg.data
    frames = d.frames - 1 if d.protocol == "shift" else d.context_frames
    batch_shape = (t.batch_size, frames, *d.frame_shape)
    choices = devices.choose(t, cfg.model, seen, replicated=strategy_name(strategy) != "DefaultStrategy")
    predicted = d.predict_frames if models.is_direct(cfg.model) else frames  # a direct model's, else one per input
    shapes = dict(frame_shape=d.frame_shape, input_frames=frames, output_frames=predicted)
    devices.check_step_fits(t, cfg.model, choices, **shapes)
    model, choices = compiled_model(cfg, strategy, replicas, choices, batch_shape=batch_shape)

    rng = np.random.default_rng(0)
    x = rng.random((t.batch_size * replicas, *batch_shape[1:]), dtype=np.float32)
    y = (
        np.roll(x, -1, axis=1)[:, :predicted]
        if predicted <= frames
        else rng.random((len(x), predicted, *d.frame_shape))
    )
    dataset = tf.data.Dataset.from_tensors((x, y.astype(np.float32))).repeat()
    timer = _StepTimes()
    for gpu in range(len(gpus)):
        tf.config.experimental.reset_memory_stats(f"GPU:{gpu}")
    try:
        model.fit(dataset, steps_per_epoch=steps, epochs=1, callbacks=[timer], verbose=0, shuffle=False)
    except tf.errors.ResourceExhaustedError:
        raise TrainingError(
            f"out of memory at batch {len(timer.durations) + 1} ({t.batch_size} clips per device of {batch_shape[1:4]}, "
            f"precision {choices.policy}, XLA {choices.xla}): lower train.batch_size or the model's size"
        ) from None
    except tf.errors.OpError as err:
        stage = "the first step" if not timer.durations else f"batch {len(timer.durations) + 1}"
        raise TrainingError(
            f"{stage} failed under precision {choices.policy}, XLA {choices.xla} ({tf_error_line(err)}); "
            "try train.mixed_precision=off or train.jit_compile=off to find which"
        ) from None

    step_s = statistics.median(timer.durations[1:])
    clips_per_s = t.batch_size * replicas / step_s
    flops = models.flops_per_clip(cfg.model, **shapes)["train"]
    memory = models.step_memory(cfg.model, **shapes, value_bytes=4 if choices.policy == "float32" else 2)
    peak = devices.peak_tflops(gpus[0] if gpus else seen[0])
    achieved = flops * clips_per_s / replicas / 1e12  # TFLOP/s per device
    report = {
        "host": _host(),
        "devices": [dataclasses.asdict(dev) for dev in seen],
        "strategy": strategy_name(strategy),
        "replicas": replicas,
        "precision": choices.policy,
        "xla": choices.xla,
        "xla_fallback": choices.fallback,
        "choices": choices.why,
        "first_step_s": timer.durations[0],
        "step_s": step_s,
        "clips_per_s": clips_per_s,
        "clips_per_s_per_device": clips_per_s / replicas,
        "peak_memory_bytes": _peak_memory(len(gpus)),
        "step_bytes_per_clip": memory[0] if memory else None,  # the family's estimate, where it makes one
        "train_flops_per_clip": flops,
        "tflops_per_device": achieved,
        "peak_tflops_per_device": peak,
        "mfu": achieved / peak if peak else None,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    report["lines"] = _lines(report, steps)
    storage.write_bytes(out, ("\n".join(report["lines"]) + "\n").encode())
    report["path"] = out
    return report


def _local(strategy: str, *, gpus: int) -> str:
    """The strategy over this machine's own devices (never multi-worker, whatever TF_CONFIG says): a multi-worker
    job's part on one VM is Mirrored, as is auto on several GPUs."""
    if strategy == "multi_worker" or (strategy == "auto" and gpus > 1):
        return "mirrored"
    return "default" if strategy == "auto" else strategy


class _StepTimes(keras.callbacks.Callback):
    """Wall time of each training batch (the first includes tracing and compiling)."""

    def __init__(self):
        super().__init__()
        self.durations: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


def _peak_memory(gpus: int) -> int:
    """Peak bytes: the largest GPU's since the stats were reset; without a GPU, this process's peak RSS."""
    if gpus:
        import tensorflow as tf

        return max(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] for i in range(gpus))
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kb * 1024


def _lines(r: dict, steps: int) -> list[str]:
    names = sorted({dev["name"] for dev in r["devices"]})
    capability = sorted({tuple(dev["compute_capability"]) for dev in r["devices"] if dev["compute_capability"]})
    memory = "GPU" if r["devices"][0]["kind"] == "GPU" else "host RSS"
    mfu = (
        f"{100 * r['mfu']:.1f}% ({r['tflops_per_device']:.2f} of {r['peak_tflops_per_device']:g} TFLOP/s per device "
        f"{'peak bf16' if memory == 'GPU' else 'nominal CPU peak'}, {r['train_flops_per_clip'] / 1e9:.2f} GFLOP per clip)"
        if r["mfu"] is not None
        else f"n/a (no peak known for {', '.join(names)}; {r['tflops_per_device']:.2f} TFLOP/s per device)"
    )
    return [
        f"doctor on {r['host']}: {len(r['devices'])}x {', '.join(names)}"
        + (f" (compute capability {', '.join('.'.join(map(str, c)) for c in capability)})" if capability else ""),
        f"choices: {r['choices']}",
        f"strategy: {r['strategy']}, {r['replicas']} replica(s)",
        f"first step (trace + compile): {r['first_step_s']:.1f} s",
        f"step: {1000 * r['step_s']:.1f} ms (median of {steps - 1}), {r['clips_per_s']:.1f} clips/s, "
        f"{r['clips_per_s_per_device']:.1f} clips/s per device",
        f"peak memory ({memory}): {r['peak_memory_bytes'] / 2**30:.2f} GiB"
        + (
            f" (the model's estimate: {r['step_bytes_per_clip'] / 2**20:.1f} MiB per clip in a training step)"
            if r.get("step_bytes_per_clip")
            else ""
        ),
        f"model FLOP utilisation: {mfu}",
    ]


def _host() -> str:
    return os.environ.get("NFP_HOST") or socket.gethostname()


def _check_report_path(out: str, *, given: bool) -> None:
    """ConfigError (naming --out, or train.output_dir for the default) when the report could not be written there."""
    from nfp.errors import ConfigError

    folder = out.rpartition("/")[0] or "."
    storage.output_dir_flag(folder if given else None, folder)
    if storage.is_local(out) and storage.local_path(out).is_dir():
        raise ConfigError(f"--out: {out} is a directory, expected the report's file path")
