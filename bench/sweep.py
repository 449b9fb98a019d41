"""`nfp sweep` against a real `mlflow server` on 127.0.0.1: the study's bookkeeping per trial, and how many trials
2 workers finish in a fixed budget against 1.

Every trial is the same tiny training (16×16 Moving MNIST, a one-layer ConvLSTM of 4 filters, 2 epochs), its
learning rate swept. Each worker is an `nfp sweep` process pinned to a core of its own (its trials inherit it), as a
worker owns a GPU on a GPU VM (`--workers N`, CUDA_VISIBLE_DEVICES): 1 worker on core 0, then 2 workers on cores 0
and 1, each run with `sweep.timeout` seconds (a worker starts no trial after it; the one running finishes). A
trial's training seconds are its `nfp train` process's (`nfp.sweep.train_s`); a worker's bookkeeping is the rest of
its wall time (its start, the study's reads and writes on the server, sampling, the summary), per trial it ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from bench.common import REPO, Section, fmt, ratio_check

NAME = "sweep"
TITLE = "10. Sweeps: the study's bookkeeping per trial, and trials finished by 2 workers against 1 in a fixed budget"
COLUMNS = ["workers", "trials run", "complete", "training s / trial", "bookkeeping s / trial", "bookkeeping / training"]
SIZES = {False: dict(timeout=150, trials=200), True: dict(timeout=None, trials=1)}


def _server(root: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "artifacts")],
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.DEVNULL,
        stderr=open(root / "server.log", "ab"), start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"mlflow server not healthy after 90 s: {root}/server.log")


def _config(workdir: Path, study: str, s: dict) -> Path:
    config = {
        "data": {"source": "generate", "image_size": 16, "digit_size": 8, "frames": 6, "num_clips": 48,
                 "num_shards": 2, "dir": str(workdir / "data"), "context_frames": 3, "predict_frames": 3},
        "model": {"preset": "custom", "filters": [4], "kernel_sizes": [3]},
        "train": {"epochs": 2, "batch_size": 4, "verbose": 2, "images": {"every_n_epochs": 0}},
        "tracking": {"experiment": "bench-sweep", "system_metrics": False, "log_model": False},
        "evaluate": {"context_frames": 3, "predict_frames": 3, "batch_size": 4, "max_clips": 8, "every_n_epochs": 1},
        "sweep": {"study": study, "trials": s["trials"], "timeout": s["timeout"], "pruner": "none",
                  "output_dir": str(workdir / "sweeps"),
                  "space": {"train.learning_rate": {"log_uniform": [3e-4, 3e-3]}}},
    }  # fmt: skip
    path = workdir / f"{study}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _study(uri: str, workdir: Path, study: str, workers: int, s: dict) -> dict:
    """`workers` nfp sweep processes, worker i pinned to core i; their wall times and the study's trials."""
    import mlflow

    config = _config(workdir, study, s)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
    logs, processes, started = [], [], time.monotonic()
    for core in range(workers):
        log = open(workdir / f"{study}-worker-{core}.log", "w")  # closed below
        logs.append(log)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "nfp", "sweep", "-c", str(config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**env, "NFP_SWEEP_WORKER": str(core)}, preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}),
        ))  # fmt: skip
    walls = []
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError(f"nfp sweep exited with {process.returncode}: see {workdir}/{study}-worker-*.log")
        walls.append(time.monotonic() - started)
    for log in logs:
        log.close()
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("bench-sweep").experiment_id])
    trials = [r for r in runs if r.data.tags.get("nfp.sweep.study") == study]
    train_s = [float(r.data.tags["nfp.sweep.train_s"]) for r in trials]
    complete = sum(r.info.status == "FINISHED" and "value" in r.data.metrics for r in trials)
    return {"workers": workers, "wall_s": sum(walls), "trials": len(trials), "complete": complete,
            "train_s": sum(train_s), "bookkeeping_s": (sum(walls) - sum(train_s)) / max(len(trials), 1)}  # fmt: skip


def run(quick: bool, workdir: Path) -> Section:
    s = SIZES[quick]
    workdir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        raise RuntimeError(f"needs 2 cores (one per worker), this process may use {cores}")
    server, uri = _server(workdir)
    try:
        one = _study(uri, workdir, "one-worker", 1, s)
        two = _study(uri, workdir, "two-workers", 2, {**s, "trials": s["trials"] * (2 if quick else 1)})
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = [[r["workers"], r["trials"], r["complete"], r["train_s"] / max(r["trials"], 1), r["bookkeeping_s"],
             r["bookkeeping_s"] / (r["train_s"] / max(r["trials"], 1))] for r in (one, two)]  # fmt: skip
    budget = f"{s['timeout']} s of `sweep.timeout`" if s["timeout"] else f"{s['trials']} trial(s) per worker"
    return Section(
        NAME,
        TITLE,
        setup=f"`nfp sweep` against a real `mlflow server` (127.0.0.1, SQLite), MLflow's Optuna storage; each worker "
        f"a process pinned to a core of its own, as a worker owns a GPU; every trial the same tiny training (16×16, "
        f"ConvLSTM of 4 filters, 2 epochs, 48 clips, its learning rate sampled by TPE); budget {budget}. Bookkeeping: "
        "a worker's wall time less its trials' training processes, per trial.",
        columns=COLUMNS,
        rows=rows,
        checks=[
            ratio_check("trials in the budget, 2 workers / 1", two["trials"], one["trials"], 1.8, "trials"),
            ratio_check(
                "bookkeeping per trial / its training, 1 worker",
                one["bookkeeping_s"],
                one["train_s"] / max(one["trials"], 1),
                None,
                "s",
            ),
        ],
        notes=[
            f"wall time of the workers in all: 1 worker {fmt(one['wall_s'])} s, 2 workers {fmt(two['wall_s'])} s",
            "a trial's training seconds include its process's start (Python, TensorFlow, the data's manifest), which a "
            "GPU trial of hours amortises: the bookkeeping is seconds per trial whatever the trial's length",
        ],
        quick=quick,
    )
