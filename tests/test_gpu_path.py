"""The GPU path on the CPU: the shipped GPU configs, only their sizes shrunk and the GPU's choices forced (XLA on,
mixed bfloat16), train end to end under MirroredStrategy over 2 logical CPUs and under MultiWorkerMirroredStrategy
in two worker processes, then `nfp evaluate` and `nfp predict` run on what they wrote; the Keras cell under XLA;
and bfloat16 training stays close to float32 on the same batches."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from conftest import free_ports

from nfp.config import load_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

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


def _shrunk_simvp(tmp_path, *extra, jit_compile="auto") -> list[str]:
    """_shrunk with the tiny TAU for the shipped model, and train.jit_compile as a GPU would choose it."""
    convlstm = ("model.", "train.scheduled_sampling=", "train.jit_compile=")
    kept = [o for o in _shrunk(tmp_path, *extra) if not o.startswith(convlstm)]
    return [*kept, *SIMVP, f"train.jit_compile={jit_compile}"]


def _nfp(command: str, config: str, overrides: list[str], *args, env=None, timeout=600) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, command, "--config", config, *args, *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
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
    assert sorted(p.suffix for p in (out / "p").iterdir()) == [".gif", ".png"]


def test_the_multi_gpu_config_trains_evaluates_and_predicts_with_xla_and_bf16_on_two_devices(tmp_path):
    config = "configs/multi_gpu.yaml"
    overrides = _shrunk(tmp_path, "distribute.devices=['/cpu:0', '/cpu:1']")
    shipped = load_config(config, [])
    assert (shipped.distribute.strategy, shipped.model.preset, shipped.train.jit_compile) == (
        "mirrored", "convlstm_s", "auto",
    )  # fmt: skip
    trained = _nfp("train", config, overrides)
    assert trained["cell_xla"] >= 2  # each replica's cell compiled by XLA (training; evaluation, strips in one pass)
    assert {"free_run:xla"} <= set(trained["compiled"])  # the periodic evaluation's and the strips' rollouts

    client, run = _the_run()
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert (tags["strategy"], tags["xla"], tags["precision"]) == ("MirroredStrategy", "cell", "mixed_bfloat16")
    assert "xla_fallback" not in tags
    assert tags["replicas"] == "2" and params["model.preset"] == "convlstm_s" and tags["global_batch_size"] == "4"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert sorted(history) == [1] and all(np.isfinite(list(history.values())))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mse")] == [1]  # periodic evaluation
    artifacts = _artifacts(client, run.info.run_id)
    assert {"checkpoints/best.keras", "checkpoints/last.keras", "predictions/clip.gif"} <= artifacts
    assert any(a.startswith("images/predictions~clip_0") for a in artifacts)  # the strips' image series
    assert mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")  # the model

    out = tmp_path / "out"
    assert (out / "backup/latest.weights.h5").is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    _evaluate_and_predict_with_xla(config, overrides, out)


def test_the_multi_gpu_config_trains_a_direct_family_on_two_devices_then_evaluates_and_predicts_with_xla(tmp_path):
    config = "configs/multi_gpu.yaml"
    overrides = _shrunk_simvp(tmp_path, "distribute.devices=['/cpu:0', '/cpu:1']")
    trained = _nfp("train", config, overrides)
    assert trained["cell_xla"] == 0 and set(trained["compiled"]) == {"direct:plain"}
    client, run = _the_run()
    tags = run.data.tags
    assert (tags["strategy"], tags["xla"], tags["precision"], tags["replicas"]) == (
        "MirroredStrategy", "off", "mixed_bfloat16", "2",
    )  # fmt: skip
    assert run.data.params["model.preset"] == "tau_tiny"
    metrics = run.data.metrics
    assert np.isfinite(metrics["loss"]) and "differential_divergence" in metrics and "val_mse" in metrics
    assert {"checkpoints/best.keras", "predictions/clip.gif"} <= _artifacts(client, run.info.run_id)
    _evaluate_and_predict_with_xla(config, overrides, tmp_path / "out", rollout="direct")


def test_the_tau_config_trains_with_xla_and_bf16_on_one_device_then_evaluates_and_predicts(tmp_path):
    """configs/tau.yaml, the one-GPU config: Keras compiles the whole training step with XLA."""
    config = "configs/tau.yaml"
    shipped = load_config(config, [])
    assert (shipped.model.preset, shipped.distribute.strategy, shipped.train.schedule.name) == (
        "tau", "default", "onecycle",
    )  # fmt: skip
    overrides = _shrunk_simvp(tmp_path, jit_compile="on")
    trained = _nfp("train", config, overrides)
    assert "direct:xla" in trained["compiled"]  # strips and periodic evaluation, as training: XLA
    _, run = _the_run()
    assert (run.data.tags["xla"], run.data.tags["precision"]) == ("step", "mixed_bfloat16")
    _evaluate_and_predict_with_xla(config, overrides, tmp_path / "out", rollout="direct")


@pytest.mark.parametrize("family", ["convlstm", "simvp"])
def test_the_multi_node_config_trains_on_two_workers_with_xla_and_bf16_then_evaluates_and_predicts(tmp_path, family):
    config = "configs/multi_node.yaml"
    overrides = _shrunk(tmp_path) if family == "convlstm" else _shrunk_simvp(tmp_path)
    from nfp.data.prepare import ensure_prepared

    ensure_prepared(load_config(config, overrides).data)  # one shared data dir, prepared once (gs:// in production)
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(
            os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _RUN, "train", "--config", config, *overrides],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        )  # fmt: skip
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    reports = []
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-4000:]
        reports.append(json.loads(next(ln for ln in reversed(stdout.splitlines()) if ln.startswith("REPORT "))[7:]))
    xla = "cell" if family == "convlstm" else "off"  # a replicated SimVP runs without XLA (nfp.distribute.devices)
    assert all((r["cell_xla"] >= 1) == (xla == "cell") for r in reports)  # both workers' cells compiled by XLA
    _, run = _the_run()
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["strategy"], tags["xla"], tags["precision"]) == ("MultiWorkerMirroredStrategy", xla, "mixed_bfloat16")
    assert run.data.tags["num_workers"] == "2"
    _evaluate_and_predict_with_xla(
        config, overrides, tmp_path / "out", "free_run" if family == "convlstm" else "direct"
    )


def test_the_keras_cell_trains_under_xla(tiny_overrides, monkeypatch):
    """One replica: Keras compiles the whole step (the keras cell has no XLA function of its own)."""
    from nfp.training.train import train

    compiled = []
    real_fit = keras.Model.fit

    def spy_fit(self, *args, **kwargs):
        compiled.append(self.jit_compile)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    summary = train(load_config(None, [*tiny_overrides, "model.cell=keras", *GPU_CHOICES, "tracking.log_model=false"]))
    assert compiled == [True] and len(summary["history"]["loss"]) == 2
    tags = mlflow.MlflowClient().get_run(summary["run_id"]).data.tags
    assert (tags["xla"], tags["precision"]) == ("step", "mixed_bfloat16")


BF16_TOLERANCE = 0.02  # relative, per step: bfloat16 convolutions, float32 gates, cell state and loss


@pytest.mark.parametrize("xla", ["step", "cell"])
def test_bf16_training_follows_float32_on_the_same_batches(xla):
    """20 Adam steps of the tiny nfp model from the same weights on the same batches: under mixed_bfloat16 each
    step's loss stays within BF16_TOLERANCE of float32's (the cell state stays float32: a bfloat16 state stops
    growing once its steps fall under half a unit in the last place; test_model.py shows it at 0.5)."""
    cfg = load_config(None, ["model.preset=tiny", "model.filters=[16, 16]", "data.image_size=16", "data.digit_size=8"])
    from nfp.models.convlstm.model import build_model

    rng = np.random.default_rng(0)
    clips = rng.random((20, 4, 6, 16, 16, 1), dtype=np.float32)
    losses, weights = {}, None
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = build_model(cfg.model, image_size=16, xla_cell=xla == "cell")
            model.compile(keras.optimizers.Adam(1e-3), "mse", jit_compile=xla == "step")
        finally:
            keras.mixed_precision.set_global_policy("float32")
        weights = weights or model.get_weights()
        model.set_weights(weights)
        losses[policy] = np.array([model.train_on_batch(x[:, :-1], x[:, 1:]) for x in clips])
    assert losses["float32"][-1] < losses["float32"][0]  # it learns
    relative = np.abs(losses["mixed_bfloat16"] - losses["float32"]) / losses["float32"]
    assert relative.max() < BF16_TOLERANCE, relative
