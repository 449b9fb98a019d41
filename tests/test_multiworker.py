"""Two `nfp train` worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy + the Keras workaround) train in lock-step."""

import json
import os
import subprocess
import textwrap

import mlflow
import numpy as np
import pytest
import warm
from conftest import free_ports

from nfp.config import load_config

# Runs train() as-is; a spy on build_callbacks records where each worker writes and its final weights.
_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import keras, numpy as np
    from nfp.training import callbacks as cb
    from nfp.config import load_config
    from nfp.training.train import train

    real_build = cb.build_callbacks
    out = os.environ["NFP_TEST_OUT"]

    class DumpWeights(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            np.savez(out + ".npz", *self.model.get_weights())
            trainable = {id(v) for v in self.model.trainable_weights}
            json.dump([id(v) in trainable for v in self.model.weights], open(out + ".trainable.json", "w"))

    def spy(*args):
        callbacks = real_build(*args)
        writes = [c.final_path for c in callbacks if isinstance(c, cb.AtomicCheckpoint)]
        writes += [c.filename for c in callbacks if isinstance(c, keras.callbacks.CSVLogger)]
        writes += [c.save_dir for c in callbacks if isinstance(c, cb.Backup)]
        json.dump({"writes": writes, "images": any(isinstance(c, cb.PredictionImages) for c in callbacks)}, open(out + ".json", "w"))
        return callbacks + [DumpWeights()]

    cb.build_callbacks = spy
    summary = train(load_config(None, sys.argv[1:]))
    print("SUMMARY " + json.dumps({k: v for k, v in summary.items() if k != "history"} | {"loss": summary["history"]["loss"]}))
    """
)


@pytest.mark.slow
def test_two_workers_train_in_lock_step_and_only_the_chief_writes(tiny_overrides, tmp_path):
    overrides = [
        *tiny_overrides,
        "distribute.strategy=auto",  # picks MultiWorkerMirroredStrategy from the two-task TF_CONFIG
        "train.images.every_n_epochs=1",
        "train.scheduled_sampling=3",  # anneals within the 4 steps: each worker feeds back its own predictions
        "tracking.log_model=false",
    ]
    from nfp.data.prepare import ensure_prepared

    ensure_prepared(load_config(None, overrides).data)  # shared data dir, prepared once up front
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(
            os.environ,
            NFP_TEST_OUT=str(tmp_path / f"worker{index}"),
            MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.1",  # sample within the few seconds training takes
            MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING="1",
            TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}),
        )
        procs.append(warm.Process(["-c", _WORKER, *overrides], env=env))
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    summaries = [
        json.loads(next(line[8:] for line in out.splitlines() if line.startswith("SUMMARY "))) for out, _ in results
    ]
    assert summaries[0]["loss"] == summaries[1]["loss"] and len(summaries[0]["loss"]) == 2

    # identical weights: trainable ones bit for bit, BatchNorm moving statistics to float precision
    w0, w1 = np.load(tmp_path / "worker0.npz"), np.load(tmp_path / "worker1.npz")
    trainable = json.loads((tmp_path / "worker0.trainable.json").read_text())
    for key, is_trainable in zip(w0.files, trainable):
        if is_trainable:
            np.testing.assert_array_equal(w0[key], w1[key])
        else:
            np.testing.assert_allclose(w0[key], w1[key], atol=1e-4)

    # only the chief writes into output_dir; the other worker writes to a scratch dir, draws no images
    out = str(tmp_path / "out")
    chief, other = (json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2))
    assert chief["writes"] and all(p.startswith(out) for p in chief["writes"]) and chief["images"]
    assert other["writes"] and not any(p.startswith(out) for p in other["writes"]) and not other["images"]
    assert sorted(os.listdir(tmp_path / "out/checkpoints")) == ["best.keras", "last.keras"]
    assert summaries[1]["run_id"] is None and summaries[1]["best_checkpoint"] is not None  # it reads the chief's files

    from nfp.inference.model_source import load_model

    last = load_model(str(tmp_path / "out/checkpoints/last.keras"))
    for key, weight in zip(w0.files, last.get_weights()):
        np.testing.assert_array_equal(w0[key], weight)
    assert int(last.get_layer("convlstm").sampling_step.numpy()) == 4  # 2 epochs × 2 global steps, counted once each

    client = mlflow.MlflowClient()
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["replicas"] == "2" and runs[0].data.tags["num_workers"] == "2"
    assert runs[0].data.tags["strategy"] == "MultiWorkerMirroredStrategy"
    system = set(runs[0].data.metrics)  # each machine's: the chief's with its run, the other's under its node id
    assert {"system/cpu_utilization_percentage", "system/worker_1/cpu_utilization_percentage"} <= system, system


@pytest.mark.slow
def test_a_lost_worker_stops_the_other_with_one_line_saying_how_to_resume(tiny_overrides, tmp_path):
    """No hang: TF aborts the survivor's collectives when a peer goes, and nfp says to restart every worker."""
    import re
    import time

    from nfp.data.prepare import ensure_prepared

    overrides = [
        *tiny_overrides,
        "distribute.strategy=multi_worker",
        "train.epochs=500",
        "train.verbose=2",
        "tracking.log_model=false",
    ]
    ensure_prepared(load_config(None, overrides).data)
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    procs = []
    try:
        for index, log in enumerate(logs):
            env = dict(
                os.environ,
                PYTHONUNBUFFERED="1",
                TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}),
            )
            procs.append(
                warm.Process(
                    ["-m", "nfp.cli", "train", *overrides], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
                )
            )
        deadline = time.monotonic() + 240
        while "Epoch 3/" not in logs[1].read_text() and time.monotonic() < deadline and procs[1].poll() is None:
            time.sleep(0.5)
        assert "Epoch 3/" in logs[1].read_text(), logs[1].read_text()[-3000:]
        procs[1].kill()  # as a VM that is gone
        returncode = procs[0].wait(timeout=120)  # …the survivor must not wait forever in a collective
    finally:
        for p in procs:
            p.kill()
    output = logs[0].read_text()
    assert returncode == 2, output[-3000:]
    error = [line for line in output.splitlines() if line.startswith("error: ")]
    assert re.fullmatch(
        r"error: a worker was lost in epoch \d+ \(.+\): stopped; start every worker again with the same "
        r"command: training resumes from .*backup.*",
        error[-1],
    ), error
    client = mlflow.MlflowClient()
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert (
        run.info.status == "FAILED" and "a worker was lost" in run.data.tags["error"]
    )  # its id stays in output_dir: a restart resumes it
