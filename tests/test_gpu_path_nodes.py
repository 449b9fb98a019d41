"""The GPU path on the CPU, continued (apart so that a parallel run shares the long end-to-end runs out): the one-GPU
direct configs (TAU, PredFormer) with XLA on the whole step, and the multi-node config in two worker processes for each
family."""

import json
import os

import pytest
import warm
from conftest import free_ports
from gpu_path import _RUN, REPO, _evaluate_and_predict_with_xla, _nfp, _shrunk, _shrunk_simvp, _the_run

from nfp.config import load_config

pytestmark = pytest.mark.slow


ONE_GPU = {
    "simvp": ("configs/tau.yaml", "tau", "direct"),
    "predformer": ("configs/predformer.yaml", "predformer", "direct"),
    "predrnn": ("configs/predrnn_v2.yaml", "predrnn_v2", "free_run"),
}


@pytest.mark.parametrize("family", list(ONE_GPU))
def test_the_one_gpu_family_configs_train_with_xla_and_bf16_on_one_device_then_evaluate_and_predict(tmp_path, family):
    """configs/tau.yaml, predformer.yaml and predrnn_v2.yaml, the one-GPU configs: Keras compiles the whole training
    step."""
    config, preset, rollout = ONE_GPU[family]
    shipped = load_config(config, [])
    assert (shipped.model.preset, shipped.distribute.strategy, shipped.train.schedule.name) == (
        preset, "default", "onecycle",
    )  # fmt: skip
    overrides = _shrunk_simvp(tmp_path, jit_compile="on", family=family)
    trained = _nfp("train", config, overrides)
    assert f"{rollout}:xla" in trained["compiled"]  # strips and periodic evaluation, as training: XLA
    _, run = _the_run()
    assert (run.data.tags["xla"], run.data.tags["precision"]) == ("step", "mixed_bfloat16")
    _evaluate_and_predict_with_xla(config, overrides, tmp_path / "out", rollout=rollout)


@pytest.mark.parametrize("family", ["convlstm", "simvp", "predformer", "predrnn"])
def test_the_multi_node_config_trains_on_two_workers_with_xla_and_bf16_then_evaluates_and_predicts(tmp_path, family):
    config = "configs/multi_node.yaml"
    overrides = _shrunk(tmp_path) if family == "convlstm" else _shrunk_simvp(tmp_path, family=family)
    from nfp.data.prepare import ensure_prepared

    ensure_prepared(load_config(config, overrides).data)  # one shared data dir, prepared once (gs:// in production)
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(
            os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
        )
        procs.append(warm.Process(["-c", _RUN, "train", "--config", config, *overrides], cwd=REPO, env=env))
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    reports = []
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-4000:]
        reports.append(json.loads(next(ln for ln in reversed(stdout.splitlines()) if ln.startswith("REPORT "))[7:]))
    xla = (
        "cell" if family == "convlstm" else "off"
    )  # a replicated direct model runs without XLA (nfp.distribute.devices)
    assert all((r["cell_xla"] >= 1) == (xla == "cell") for r in reports)  # both workers' cells compiled by XLA
    _, run = _the_run()
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["strategy"], tags["xla"], tags["precision"]) == ("MultiWorkerMirroredStrategy", xla, "mixed_bfloat16")
    assert run.data.tags["num_workers"] == "2"
    _evaluate_and_predict_with_xla(
        config, overrides, tmp_path / "out", "free_run" if family in ("convlstm", "predrnn") else "direct"
    )
