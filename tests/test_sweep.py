"""nfp sweep on real parts: a real `mlflow server` on 127.0.0.1, `nfp sweep` processes, tiny trials. The study is a
parent run, each trial a child run; two workers share one exact budget; a pruned trial ends KILLED; a worker killed
mid-trial leaves its trial to the next worker, which resumes it; a bad space is refused in one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import warm
import yaml

from nfp.config import load_config
from nfp.errors import ConfigError
from nfp.sweep.space import check_space, override, parse_space

REPO = Path(__file__).resolve().parent.parent
SPACE = {"train.learning_rate": {"log_uniform": [1e-4, 3e-3]}, "model.filters": {"choice": [[4], [6]]}}


# --------------------------------------------------------------------------- the space, before any trial
def refusal(space, sampler="tpe", overrides=()) -> str:
    with pytest.raises(ConfigError) as err:
        check_space(parse_space(space, sampler=sampler), None, list(overrides))
    return str(err.value)


def test_a_space_that_can_produce_a_bad_config_is_refused_naming_the_key():
    assert refusal({"train.learnin_rate": {"uniform": [0.1, 0.2]}}) == (
        "sweep.space.train.learnin_rate: 0.1 is refused: train.learnin_rate: unknown key, did you mean "
        "train.learning_rate?"
    )
    assert refusal({"train.learning_rate": {"uniform": [-1, 0.1]}}) == (
        "sweep.space.train.learning_rate: -1.0 is refused: train.learning_rate: got -1.0, expected >= 0"
    )
    assert refusal({"train.batch_size": {"uniform": [2, 8]}}).startswith(
        "sweep.space.train.batch_size: 2.0 is refused: train.batch_size: got 2.0, expected an integer"
    )
    assert refusal({"model.preset": {"choice": ["tiny", "huge"]}}).startswith(
        "sweep.space.model.preset: huge is refused: model.preset: got 'huge', expected one of tiny,"
    )
    assert refusal({"train.learning_rate": {"log_uniform": [0, 1]}}) == (
        "sweep.space.train.learning_rate: log_uniform got [0, 1], expected 0 < low < high"
    )
    assert refusal({"train.learning_rate": {"uniform": [0.1, 0.2]}}, sampler="grid") == (
        "sweep.space.train.learning_rate: uniform under sweep.sampler grid, expected int or choice (a grid has steps)"
    )
    assert refusal({"train.learning_rate": {"normal": [0, 1]}}).startswith(
        "sweep.space.train.learning_rate: got {'normal': [0, 1]}, expected one of {log_uniform, uniform, int, choice"
    )
    assert refusal({}).startswith("sweep.space: empty")
    assert (
        refusal({"sweep.trials": {"int": [1, 3]}}) == "sweep.space.sweep.trials: the sweep's own keys cannot be swept"
    )


def test_a_space_is_read_from_dotted_or_nested_keys_and_a_combination_is_left_to_its_trial():
    nested = load_config(None, ["sweep.space.train.batch_size={int: [2, 8]}"]).sweep.space
    (dim,) = parse_space(nested, sampler="grid")
    assert (dim.key, dim.kind, dim.bounds) == ("train.batch_size", "int", (2, 8))
    # [4, 4] with one kernel size fails only with model.kernel_sizes=[3]: a trial's outcome, not the space's
    check_space(parse_space({"model.filters": {"choice": [[4], [4, 4]]}}, sampler="tpe"), None,
                ["model.preset=custom", "model.kernel_sizes=[3]"])  # fmt: skip
    assert override("model.filters", [4, 4]) == "model.filters=[4, 4]"
    assert load_config(None, ["model.preset=custom", override("model.filters", [8, 8])]).model.filters == [8, 8]


def test_the_cli_refuses_a_bad_space_in_one_line_before_any_run(tmp_path, mlflow_server):
    config = write_config(tmp_path, "bad", trials=2, space={"train.learning_rate": {"uniform": [-1, 1]}})
    done = sweep_process(config, mlflow_server.uri)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 2, err
    assert err.strip().splitlines() == [
        "error: sweep.space.train.learning_rate: -1.0 is refused: train.learning_rate: got -1.0, expected >= 0"
    ]
    assert client(mlflow_server.uri).get_experiment_by_name(f"sweep-{tmp_path.name}") is None


@pytest.mark.parametrize(("visible", "gpus", "expected"), [("4,5", 8, ["4", "5", "4"]), (None, 2, ["0", "1", "0"])])
def test_workers_take_a_gpu_each_of_those_the_command_may_use(monkeypatch, visible, gpus, expected):
    """`nfp sweep --workers 3` on a GPU VM (the workers' processes faked): worker i sees one GPU, i-th of
    CUDA_VISIBLE_DEVICES when the command was given one, else of the machine's (nvidia-smi), round robin; each worker's
    seed index follows the VM's (NFP_SWEEP_WORKER, a node's rank)."""
    from nfp.sweep import worker

    envs = []

    class Process:
        def __init__(self, argv, env):
            assert argv[1:] == ["-m", "nfp", "sweep", "-c", "my.yaml"]
            envs.append(env)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(worker, "prepare", lambda *args: None)
    monkeypatch.setattr(worker, "_gpu_count", lambda: gpus)
    monkeypatch.setattr(worker.subprocess, "Popen", Process)
    monkeypatch.setenv("NFP_SWEEP_WORKER", "1")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert worker.start_workers(None, "my.yaml", [], ["-c", "my.yaml"], 3) == 0
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == expected
    assert [e["NFP_SWEEP_WORKER"] for e in envs] == ["3", "4", "5"]


# --------------------------------------------------------------------------- real workers on a real server
def write_config(tmp_path: Path, study: str, *, trials: int, space=SPACE, epochs=2, **sweep) -> Path:
    """A tiny sweep (16×16 frames, 4 filters, 2 epochs) into the server's experiment of this test."""
    config = {
        "data": {"source": "generate", "image_size": 16, "digit_size": 8, "frames": 6, "num_clips": 24,
                 "num_shards": 2, "dir": str(tmp_path / "data"), "context_frames": 3, "predict_frames": 3},
        "model": {"preset": "custom", "filters": [4], "kernel_sizes": [3]},
        "train": {"epochs": epochs, "batch_size": 4, "verbose": 2, "output_dir": str(tmp_path / "unused"),
                  "images": {"every_n_epochs": 0}},
        "tracking": {"experiment": f"sweep-{tmp_path.name}", "system_metrics": False, "log_model": False},
        "evaluate": {"context_frames": 3, "predict_frames": 3, "batch_size": 4, "max_clips": 4, "every_n_epochs": 1},
        "sweep": {"study": study, "trials": trials, "space": space, "output_dir": str(tmp_path / "sweeps"), **sweep},
    }  # fmt: skip
    path = tmp_path / f"{study}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sweep_process(config: Path, uri: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    return warm.Process(["-m", "nfp", "sweep", "-c", str(config), *args], cwd=REPO, env=env)


def finish(process: subprocess.Popen, timeout=600) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return out


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def study_runs(uri: str, tmp_path: Path, study: str):
    """(the study's run, its trials' runs by slot): every run of the experiment is one or the other."""
    c = client(uri)
    experiment = c.get_experiment_by_name(f"sweep-{tmp_path.name}")
    runs = c.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("nfp.sweep.study") == "study"]
    assert parent.info.run_name == study
    trials = [r for r in runs if r is not parent]
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in trials)
    return parent, sorted(trials, key=lambda r: int(r.data.tags.get("nfp.sweep.slot", -1)))


@pytest.mark.slow
def test_two_workers_share_one_study_and_run_its_budget_exactly(tmp_path, mlflow_server):
    """`nfp sweep --workers 2`, 6 trials: one parent run, exactly 6 child runs, each slot once, each trial a whole
    training run (its params, per-epoch metrics, checkpoints) that ended with its score; the parent holds the best
    trial's config and the figures."""
    config = write_config(tmp_path, "two", trials=6, pruner="none")
    out = finish(sweep_process(config, mlflow_server.uri, "--workers", "2"))
    parent, trials = study_runs(mlflow_server.uri, tmp_path, "two")
    assert [r.data.tags["nfp.sweep.slot"] for r in trials] == [str(n) for n in range(6)]
    assert [r.info.run_name for r in trials] == [f"two-trial-{n:03d}" for n in range(6)]
    assert sorted(v for k, v in parent.data.params.items() if k.startswith("sweep.trial.")) == sorted(
        r.info.run_id for r in trials
    )
    workers = {r.data.params["sweep.attempt.1"].rsplit(":", 1)[0] for r in trials}
    assert len(workers) == 2, workers  # both workers ran trials
    assert out.count("sweep: study 'two': 6 complete; best two-trial-") == 2  # each worker's last line
    c = client(mlflow_server.uri)
    for run in trials:
        assert run.info.status == "FINISHED"
        assert 1e-4 <= float(run.data.params["train.learning_rate"]) <= 3e-3
        assert run.data.params["model.filters"] in ("[4]", "[6]")
        assert [m.step for m in c.get_metric_history(run.info.run_id, "val_mse")] == [1, 2]
        assert run.data.metrics["value"] == min(m.value for m in c.get_metric_history(run.info.run_id, "val_mse"))
        assert Path(tmp_path / "sweeps" / "two" / f"trial-{int(run.data.tags['nfp.sweep.slot']):03d}" /
                    "checkpoints" / "best.keras").exists()  # fmt: skip
    best = min(trials, key=lambda r: r.data.metrics["value"])
    assert parent.info.status == "FINISHED" and parent.data.tags["nfp.sweep.best_run"] == best.info.run_id
    assert parent.data.metrics["best_val_mse"] == best.data.metrics["value"]
    assert parent.data.metrics["trials_complete"] == 6
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/best.yaml", "sweep/optimization_history.png", "sweep/param_importances.png"} <= artifacts
    best_yaml = yaml.safe_load(
        Path(c.download_artifacts(parent.info.run_id, "sweep/best.yaml", str(tmp_path))).read_text()
    )
    assert best_yaml["train"]["learning_rate"] == float(best.data.params["train.learning_rate"])
    # ready for `nfp train -c`: the sweep's config with the best values, not the trial's own output dir
    assert best_yaml["train"]["output_dir"] == str(tmp_path / "unused")


def test_a_trial_whose_training_logged_offline_is_replayed_before_it_is_scored(tmp_path, mlflow_server, monkeypatch,
                                                                              capsys):  # fmt: skip
    """A trial's training that lost the tracking server for a while finishes with its metrics in its backlog (a real
    worker, study and server; the trainings stand-ins): the worker runs `nfp train` of the trial once more, which
    (every epoch done) replays the backlog, then scores it, rather than stop the sweep for a metric "never logged".
    When the server fails the replay too, the trial fails naming its backlog, and the sweep goes on."""
    from nfp import storage, tracking
    from nfp.sweep import worker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    config = write_config(tmp_path, "offline", trials=2, pruner="none", epochs=1)
    cfg = load_config(str(config), [])
    trainings = []

    def training(sweep, run_id, overrides, log, holder):
        """What `nfp train` of a trial leaves when the server fails its metrics: epoch 1's in its backlog; the rerun
        replays it (the first trial's), or meets the server failing again (the second's)."""
        trial_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("train.output_dir="))
        trainings.append(Path(trial_dir).name)
        if len(trainings) in (1, 3):
            backlog = tracking.Offline(storage.join(trial_dir, tracking.BACKLOG_DIR), run_id=run_id)
            backlog.log_metrics({"val_mse": 0.25, "loss": 0.5}, step=1)
        elif len(trainings) == 2:
            with monkeypatch.context() as mp:
                mp.setenv("MLFLOW_RUN_ID", run_id)
                with tracking.start_run(cfg, is_chief=True, state_dir=trial_dir):
                    pass
        return 0

    monkeypatch.setattr(worker, "train_process", training)
    sweep = worker.prepare(cfg, str(config), [])
    assert worker.new_trial(sweep) and worker.new_trial(sweep)
    assert trainings == ["trial-000", "trial-000", "trial-001", "trial-001"]
    out = capsys.readouterr().out
    assert (
        "sweep: trial 000: its training logged 1 record(s) offline (the tracking server failed it); replaying them"
        in out
    )
    assert "sweep: trial 000 (" in out and "): val_mse 0.25\n" in out
    assert [(t.state.name, t.value) for t in sweep.study.trials] == [("COMPLETE", 0.25), ("FAIL", None)]
    trial_1 = sweep.client.get_run(sweep.study.trials[1]._trial_id)
    backlog_1 = tmp_path / "sweeps" / "offline" / "trial-001" / tracking.BACKLOG_DIR
    assert trial_1.info.status == "FAILED" and trial_1.data.tags["error"] == (
        f"val_mse is not in its run yet: 1 record(s) its training could not log are in {backlog_1}, which `nfp "
        "train` of the trial replays"
    )
    assert not (tmp_path / "sweeps" / "offline" / "trial-000" / tracking.BACKLOG_DIR).exists()
    assert len(list(backlog_1.glob("*.json"))) == 1


@pytest.mark.slow
def test_a_trial_worse_than_the_study_at_an_epoch_is_pruned_and_ends_killed(tmp_path, mlflow_server):
    """A finished trial with a perfect score at every epoch is already in the study: the next trial's val_mse after
    epoch 1 is worse than the median, so it stops there (of 3 epochs), its run KILLED and tagged with why."""
    import optuna

    from nfp.sweep import study as st

    config = write_config(tmp_path, "prune", trials=1, epochs=3, prune_after_trials=1, prune_after_epochs=0)
    cfg = load_config(config)
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.uri)
    study = st.open_study(cfg.sweep, st.experiment_id(cfg.tracking))
    dists = {"train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"train.learning_rate": 1e-3}, distributions=dists, value=0.0,
                                              intermediate_values={1: 0.0, 2: 0.0, 3: 0.0}))  # fmt: skip
    study._storage.flush_all_batches()
    out = finish(sweep_process(config, mlflow_server.uri))
    parent, trials = study_runs(mlflow_server.uri, tmp_path, "prune")
    (trial,) = [r for r in trials if "nfp.sweep.slot" in r.data.tags]
    assert trial.info.status == "KILLED"
    assert trial.data.tags["nfp.sweep.pruned"].startswith("at epoch 1: val_mse ")
    assert [m.step for m in client(mlflow_server.uri).get_metric_history(trial.info.run_id, "val_mse")] == [1]
    assert "sweep: trial 000 (train.learning_rate=" in out and "): pruned, at epoch 1: val_mse" in out
    assert parent.data.metrics["trials_pruned"] == 1


@pytest.mark.slow
def test_a_trial_the_config_refuses_fails_with_its_one_line_reason_and_a_grid_runs_to_the_budget(
    tmp_path, mlflow_server
):
    """[4, 4] or [4, 4, 4] filters with one kernel size: the space cannot know (it is the combination), the trial
    can: it fails at once, its run FAILED with the config's line as its `error` tag, and the study goes on to its
    budget — here 3 trials of a grid of 2, so the grid runs out first (Optuna's grid sampler would stop the study
    there, with a traceback outside `optimize`): the third trial samples the grid again."""
    space = {"model.filters": {"choice": [[4, 4], [4, 4, 4]]}}
    config = write_config(tmp_path, "bad-combination", trials=3, space=space, sampler="grid")
    out = finish(sweep_process(config, mlflow_server.uri))
    _, trials = study_runs(mlflow_server.uri, tmp_path, "bad-combination")
    assert len(trials) == 3 and all(t.info.status == "FAILED" for t in trials)
    assert {t.data.params["model.filters"] for t in trials[:2]} == {"[4, 4]", "[4, 4, 4]"}  # the grid, once each
    for trial, layers in ((t, t.data.params["model.filters"].count("4")) for t in trials):
        reason = f"model.kernel_sizes: got 1 sizes for {layers} filters, expected one per layer"
        assert trial.data.tags["error"].startswith(reason)
    assert "sweep: trial 000 (model.filters=[4" in out and out.count("): failed: model.kernel_sizes: got 1 sizes") == 3
    assert "sweep: study 'bad-combination': 3 fail" in out


@pytest.mark.slow
def test_a_metric_no_trial_logs_stops_the_sweep_after_its_first_trial_in_one_line(tmp_path, mlflow_server):
    """sweep.metric val_mes (misspelt): the first trial trains, is FAILED for it, and the sweep stops there in one
    line naming what the run did log, rather than spending its budget on trials that cannot be scored."""
    config = write_config(tmp_path, "misspelt", trials=3, metric="val_mes", epochs=1, pruner="none")
    done = sweep_process(config, mlflow_server.uri)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 2, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: sweep.metric: got 'val_mes', which trial 000's run did not log; it logged: ")
    assert "val_mse" in line
    _, (trial,) = study_runs(mlflow_server.uri, tmp_path, "misspelt")
    assert trial.info.status == "FAILED"


def test_a_study_name_mlflow_could_not_search_for_is_refused_in_one_line(tmp_path, mlflow_server):
    done = sweep_process(write_config(tmp_path, "it's", trials=1), mlflow_server.uri)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 2
    assert err.strip().splitlines() == [
        "error: sweep.study: got \"it's\", expected letters, digits, '.', '_' and '-' (it names a run and the trials' "
        "folder)"
    ]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_it_to_the_rerun_which_resumes_it(tmp_path, mlflow_server):
    """SIGKILL to the worker after its first trial's second epoch: its training dies with it and the trial's run is
    left RUNNING with a heartbeat that stops; the same command again waits out the lease (4 s), takes the trial over
    (attempt 2), resumes its training past epoch 1 into the same run, then runs the budget's last trial."""
    config = write_config(tmp_path, "kill", trials=2, epochs=3, lease_s=4, pruner="none")
    worker = worker_past_two_epochs(config, mlflow_server.uri, tmp_path / "sweeps" / "kill")
    training = [p for p in _children(worker.pid) if "train" in p.cmdline()]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    import psutil

    _, alive = psutil.wait_procs(training, timeout=20)
    assert not alive, "the trial's training outlived its worker"
    _, (lost,) = study_runs(mlflow_server.uri, tmp_path, "kill")
    assert lost.info.status == "RUNNING"

    out = finish(sweep_process(config, mlflow_server.uri))
    assert "sweep: trial 000: its worker was lost (no heartbeat for 4 s); resuming it as attempt 2" in out
    parent, trials = study_runs(mlflow_server.uri, tmp_path, "kill")
    assert trials[0].info.run_id == lost.info.run_id and len(trials) == 2
    assert all(r.info.status == "FINISHED" for r in trials) and parent.info.status == "FINISHED"
    assert "sweep.attempt.2" in trials[0].data.params
    steps = [m.step for m in client(mlflow_server.uri).get_metric_history(lost.info.run_id, "val_mse")]
    assert steps == [1, 2, 3]  # resumed: epoch 1 not trained (or logged) twice
    resumed = (tmp_path / "sweeps" / "kill" / "logs" / "trial-000-attempt-2.log").read_text()
    assert "Epoch 3/3" in resumed and "Epoch 1/3" not in resumed


def worker_past_two_epochs(config: Path, uri: str, study_dir: Path) -> subprocess.Popen:
    """A worker whose first trial has two epochs in its history.csv: epoch 1's backup is written before epoch 2's row
    (epoch 2's may not be yet), so a resume starts past epoch 1."""
    worker = sweep_process(config, uri)
    history = study_dir / "trial-000" / "history.csv"
    deadline = time.monotonic() + 300
    while not (history.exists() and len(history.read_text().splitlines()) >= 3):  # header + 2 epochs
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[1][-3000:]
        time.sleep(0.05)
    return worker


def _children(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


@pytest.mark.slow
def test_mlflow_run_sweep_entry_point_runs_the_quickstart_sweep_offline_and_registers_the_best_model(tmp_path):
    """`mlflow run . -e sweep` of configs/quickstart.yaml, sizes shrunk, its two-key space as shipped, 2 trials into a
    local sqlite store (no server): one study run, two trials under it, the best trial's model registered under
    tracking.register_as (not every trial's), and the run `mlflow run` made pointing at the study."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/offline.db"
    shrink = (f"data.num_clips=40 data.image_size=16 data.digit_size=8 data.frames=6 data.dir={tmp_path}/data "
              "model.filters=[4,4] train.epochs=1 train.verbose=2 evaluate.context_frames=3 evaluate.predict_frames=3 "
              f"evaluate.max_clips=8 train.images.every_n_epochs=0 sweep.trials=2 sweep.output_dir={tmp_path}/sweeps "
              "tracking.register_as=quickstart-best tracking.system_metrics=false")  # fmt: skip
    # `mlflow run`, its entry point's `python -m nfp sweep` and the trials as forks of the warm Python (tests/warm.py)
    argv = ["-m", "mlflow", "run", str(REPO), "-e", "sweep", "--env-manager", "local", "--experiment-name", "qs",
            "-P", "config=configs/quickstart.yaml", "-P", f"overrides={shrink}"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = warm.run(argv, cwd=tmp_path, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sweep: study 'quickstart': 2 complete; best quickstart-trial-" in done.stdout
    c = mlflow.MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name("qs").experiment_id])
    (study,) = [r for r in runs if r.data.tags.get("nfp.sweep.study") == "study"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    (launched,) = [r for r in runs if "nfp.sweep.study_run" in r.data.tags]
    assert len(runs) == 4 and len(trials) == 2 and launched.data.tags["nfp.sweep.study_run"] == study.info.run_id
    assert {r.data.params["train.batch_size"] for r in trials} <= {"4", "8"}
    assert all(5e-4 <= float(r.data.params["train.learning_rate"]) <= 5e-3 for r in trials)
    (version,) = c.search_model_versions("name = 'quickstart-best'")
    assert version.run_id == study.data.tags["nfp.sweep.best_run"]


@pytest.mark.slow
def test_sigterm_to_a_worker_leaves_its_trial_to_the_next_worker_at_once(tmp_path, mlflow_server):
    """SIGTERM to the worker mid-trial (a preempted VM; Ctrl-C takes the same path, as a KeyboardInterrupt): one
    line, exit 130, its training stopped; the trial's run RUNNING with its heartbeat cleared, so the same command
    again takes it over at once (sweep.lease_s is 300 s here) and resumes it."""
    config = write_config(tmp_path, "interrupt", trials=1, epochs=3, pruner="none")
    worker = worker_past_two_epochs(config, mlflow_server.uri, tmp_path / "sweeps" / "interrupt")
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err[-2000:]
    _, (trial,) = study_runs(mlflow_server.uri, tmp_path, "interrupt")
    assert trial.info.status == "RUNNING" and trial.data.tags["nfp.sweep.heartbeat"] == "0"

    started = time.monotonic()
    out = finish(sweep_process(config, mlflow_server.uri))
    assert "sweep: trial 000: its worker stopped it (Ctrl-C or SIGTERM); resuming it as attempt 2" in out
    assert time.monotonic() - started < 240  # not a lease's wait
    _, (trial,) = study_runs(mlflow_server.uri, tmp_path, "interrupt")
    assert trial.info.status == "FINISHED" and "value" in trial.data.metrics
    assert float(trial.data.tags["nfp.sweep.train_s"]) > 0


@pytest.mark.slow
def test_the_shipped_gpu_sweep_config_runs_its_trials_with_xla_and_bf16_forced_and_sizes_shrunk(tmp_path):
    """configs/sweep.yaml as shipped (its space: TAU or SimVP gSTA, learning rate, batch size 8/16/32; its pruner),
    only sizes shrunk and a GPU's choices forced (XLA on the whole step, bfloat16), one trial into a local store: it
    trains its sampled family member on the GPU path and is scored."""
    import mlflow
    from gpu_path import _shrunk

    shipped = load_config(REPO / "configs/sweep.yaml")
    assert (shipped.sweep.trials, shipped.distribute.strategy) == (32, "default")
    sizes = [o for o in _shrunk(tmp_path) if not o.startswith(("model.", "train.scheduled_sampling="))]
    overrides = [*sizes, "model.spatial_channels=4", "model.temporal_channels=8", "model.encoder_blocks=2",
                 "model.translator_blocks=2", "data.context_frames=3", "data.predict_frames=3", "sweep.trials=1",
                 f"sweep.output_dir={tmp_path}/sweeps"]  # fmt: skip
    uri = f"sqlite:///{tmp_path}/gpu.db"
    done = warm.run(["-m", "nfp", "sweep", "-c", "configs/sweep.yaml", *overrides], cwd=REPO,
                    env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sweep: study 'simvp-mmnist': 1 complete; best simvp-mmnist-trial-000" in done.stdout
    c = mlflow.MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name("nfp-sweep").experiment_id])
    trials = [r for r in runs if "nfp.sweep.slot" in r.data.tags]
    assert len(trials) == 1
    for run in trials:
        assert (run.data.tags["xla"], run.data.tags["precision"]) == ("step", "mixed_bfloat16")
        assert run.data.params["model.preset"] in ("tau", "simvp_gsta")
        assert run.data.params["train.batch_size"] in ("8", "16", "32") and "value" in run.data.metrics
