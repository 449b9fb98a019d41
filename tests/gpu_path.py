"""What the GPU-path tests share (tests/test_gpu_path*.py): the shipped configs shrunk, the GPU's choices forced,
nfp's commands in a process with 2 logical CPU devices, and what their runs left."""

import json
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import warm

REPO = Path(__file__).resolve().parents[1]

# What a GPU VM would choose, forced (nfp/distribute/devices.py), on top of the shipped config.
GPU_CHOICES = ["train.jit_compile=on", "train.mixed_precision=bfloat16"]

# nfp's command in a process with 2 logical CPU devices (as a 2-GPU VM shows 2 devices); it reports how often the
# nfp cell's XLA function was asked for and which compiled functions nfp's rollouts made, as its last stdout line.
_RUN = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from nfp.models import traced
    from nfp.models.convlstm import layers
    from nfp.cli import main

    cell_xla = []
    real = layers.ConvLSTMStack._xla_steps
    layers.ConvLSTMStack._xla_steps = lambda self, feedback: cell_xla.append(feedback) or real(self, feedback)
    code = main(sys.argv[1:])
    compiled = sorted({f"{kind}:{'xla' if jit else 'plain'}" for fns in traced.COMPILED.values() for kind, jit in fns})
    print("REPORT " + json.dumps({"code": code, "cell_xla": len(cell_xla), "compiled": compiled}))
    sys.exit(code)
    """
)


def _shrunk(tmp_path, *extra) -> list[str]:
    """Sizes only: the source (offline), clips, frames, frame size, filters, steps, epochs; frequencies to fit."""
    return [
        "data.source=generate",
        "data.num_clips=40",
        "data.frames=6",
        "data.image_size=16",
        "data.digit_size=8",
        "data.num_shards=2",
        f"data.dir={tmp_path}/data",
        "data.shuffle_buffer=16",
        "model.filters=[4, 4]",
        "model.kernel_sizes=[3, 3]",
        "train.epochs=1",
        "train.batch_size=2",
        "train.scheduled_sampling=6",
        "train.images.every_n_epochs=1",
        "train.images.num_clips=2",
        "train.verbose=2",
        f"train.output_dir={tmp_path}/out",
        "evaluate.context_frames=3",
        "evaluate.predict_frames=3",
        "evaluate.max_clips=8",
        "evaluate.batch_size=4",
        "evaluate.every_n_epochs=1",
        *GPU_CHOICES,
        *extra,
    ]


# A tiny TAU in place of the shipped model: what a GPU chooses for it, forced. Replicated, XLA is off (Keras cannot
# compile a replicated step and SimVP has no cell of its own to compile: nfp.distribute.devices), so training takes auto;
# one replica compiles the whole step (jit_compile on), and so do evaluate and predict.
SIMVP = [
    "model.preset=tau_tiny", "model.spatial_channels=4", "model.temporal_channels=8", "data.context_frames=3",
    "data.predict_frames=3", "train.scheduled_sampling=0",  # multi_gpu.yaml anneals the ConvLSTM's: not a direct model's
]  # fmt: skip


# A tiny PredFormer, likewise: one block of width 16, 4×4 patches
PREDFORMER = [
    "model.preset=predformer_tiny", "model.width=16", "model.heads=2", "model.blocks=1", "data.context_frames=3",
    "data.predict_frames=3", "train.scheduled_sampling=0",
]  # fmt: skip
# A tiny PredRNN-V2 (autoregressive, its own reverse scheduled sampling)
PREDRNN = ["model.preset=predrnn_v2_tiny", "model.filters=[4, 4]", "model.kernel_sizes=[3, 3]",
           "train.scheduled_sampling=0"]  # fmt: skip
DIRECT = {"simvp": SIMVP, "predformer": PREDFORMER, "predrnn": PREDRNN}


def _shrunk_simvp(tmp_path, *extra, jit_compile="auto", family="simvp") -> list[str]:
    """_shrunk with another family's tiny model (TAU, or `family`'s) for the shipped model, and train.jit_compile as
    a GPU would choose it."""
    convlstm = ("model.", "train.scheduled_sampling=", "train.jit_compile=")
    kept = [o for o in _shrunk(tmp_path, *extra) if not o.startswith(convlstm)]
    return [*kept, *DIRECT[family], f"train.jit_compile={jit_compile}"]


def _nfp(command: str, config: str, overrides: list[str], *args, env=None, timeout=600) -> dict:
    proc = warm.run(["-c", _RUN, command, "--config", config, *args, *overrides], cwd=REPO, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("REPORT "))
    return json.loads(report[len("REPORT ") :]) | {"stdout": proc.stdout, "stderr": proc.stderr}


def _the_run():
    client = mlflow.MlflowClient()
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return client, run


def _artifacts(client, run_id, path=None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def _evaluate_and_predict_with_xla(config: str, overrides: list[str], out: Path, rollout: str = "free_run") -> None:
    """nfp evaluate and nfp predict on the training's best checkpoint, XLA forced: reports and pictures written.
    `rollout`: the compiled function a rollout runs (free_run: the nfp cell's one pass; direct: a direct model)."""
    overrides = [o for o in overrides if o != "train.jit_compile=auto"] + ["train.jit_compile=on"]
    best = str(out / "checkpoints/best.keras")
    evaluated = _nfp("evaluate", config, overrides, "--model", best, "--split", "val", "--out", str(out / "eval"))
    assert evaluated["compiled"] == [f"{rollout}:xla"]  # the rollout, compiled by XLA
    report = json.loads((out / "eval/report.json").read_text())
    assert report["clips"] == 4 and report["predict_frames"] == 3  # 40 clips → 4 val clips (max 8), 3 → 3
    assert np.isfinite(report["scores"]["model"]["mse"])
    predicted = _nfp("predict", config, overrides, "--model", best, "--input", "split:val:1", "--out", str(out / "p"))
    assert predicted["compiled"] == [f"{rollout}:xla"]
    assert sorted(p.suffix for p in (out / "p").iterdir()) == [".gif", ".json", ".png"]  # inputs.json: which input
