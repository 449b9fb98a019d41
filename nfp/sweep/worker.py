"""`nfp sweep`: one worker of a study — it takes trials until the study's budget is spent, each an `nfp train` of the
config with the trial's sampled overrides in a process of its own (its run: the trial's child run; its output dir:
<sweep.output_dir>/<study>/trial-NNN), then waits out the other workers' trials (taking over any whose worker was
lost) and writes the study's summary into the parent run."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nfp import storage, tracking
from nfp.config import load_config
from nfp.errors import ConfigError, TrackingError, first_line, redact
from nfp.sweep import study as st
from nfp.sweep.space import Dimension, check_space, override, parse_space

WORKER_ENV = "NFP_SWEEP_WORKER"  # this worker's index among the study's (--workers, a SkyPilot node's rank): its seed
PERIODIC = ("val_mse", "val_mae", "val_ssim", "val_psnr")  # epoch metrics of evaluate.every_n_epochs


@dataclass
class Sweep:
    """What every trial of this worker shares: the config it varies, the study, the tracking client."""

    cfg: object
    config_path: str | None
    overrides: list[str]
    dimensions: list[Dimension]
    study: object
    experiment_id: str
    client: object
    worker: str

    @property
    def dir(self) -> str:
        return storage.join(self.cfg.sweep.output_dir, self.cfg.sweep.study)


def prepare(cfg, config_path, overrides: list[str]) -> Sweep:
    """Every refusal before a trial: tracking, the metric, the space; then the study, loaded or made."""
    import mlflow

    s = cfg.sweep
    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled: got false, nfp sweep needs true (the study lives on the tracking server)")
    if s.metric in PERIODIC and not cfg.evaluate.every_n_epochs:
        raise ConfigError(f"sweep.metric: {s.metric} comes from the periodic evaluation, which evaluate.every_n_epochs "
                          "0 turns off; set it to 1 or more, or pick val_loss")  # fmt: skip
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s.study):
        raise ConfigError(f"sweep.study: got {s.study!r}, expected letters, digits, '.', '_' and '-' (it names a run "
                          "and the trials' folder)")  # fmt: skip
    if s.pruner != "none" and cfg.distribute.strategy == "multi_worker":
        raise ConfigError(f"sweep.pruner: {s.pruner} stops a trial on its chief only, which would leave a multi_worker "
                          "trial's other workers waiting; set sweep.pruner none")  # fmt: skip
    dimensions = parse_space(s.space, sampler=s.sampler)
    check_space(dimensions, config_path, overrides)
    tracking.check_reachable()
    experiment_id = st.experiment_id(cfg.tracking)
    # each worker samples from a seed of its own (the same seed in every worker would draw the same first trials), and
    # a rerun from another (not the same draws as the first run's)
    index = int(os.environ.get(WORKER_ENV, "0") or 0)
    study = st.open_study(s, experiment_id, dimensions, seed_offset=1000 * index)
    return Sweep(cfg, config_path, overrides, dimensions, study, experiment_id, mlflow.MlflowClient(), st.worker_name())


def run_sweep(cfg, *, config_path=None, overrides=()) -> dict:
    """This worker's part of the study, then the study's summary (nfp.sweep.summary) when no trial is left running.
    SIGTERM (a preempted VM) stops it as Ctrl-C does: its trial is left for the next worker at once. A tracking
    server that fails past MLflow's retries ends it in one line; its trial is taken over after its lease."""
    from mlflow.exceptions import MlflowException

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return _run_sweep(cfg, config_path, list(overrides))
    except MlflowException as err:
        raise TrackingError(f"sweep: the tracking server at {redact(mlflow_uri())} failed: {first_line(err)}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def mlflow_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _run_sweep(cfg, config_path, overrides: list[str]) -> dict:
    from nfp.sweep.summary import write_summary

    sweep = prepare(cfg, config_path, overrides)
    s, client, study_id = cfg.sweep, sweep.client, st.study_run_id(sweep.study)
    client.update_run(study_id, status="RUNNING")  # a rerun with a larger budget opens a finished study again
    launched_as = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run -e sweep` made a run for this worker: it points there
    if launched_as:
        client.set_tag(launched_as, "nfp.sweep.study_run", study_id)
    say(f"study {s.study!r} (run {study_id}): {s.trials} trials in all, this worker {sweep.worker}")
    started, ran = time.time(), 0
    while True:
        # a lost trial is resumed whatever sweep.timeout says: it holds a slot of the budget
        lost = [r for r in st.running_trials(client, sweep.experiment_id, study_id) if st.is_stale(r, s.lease_s)]
        if lost and take_over(sweep, lost[0]):
            ran += 1
            continue
        if st.free_slots(client, study_id, s.trials) and (s.timeout is None or time.time() - started < s.timeout):
            if new_trial(sweep):
                ran += 1
                continue
        running = st.running_trials(client, sweep.experiment_id, study_id)
        if not running:
            break
        time.sleep(min(s.lease_s / 4, 5))  # other workers' trials: wait for them, or for their lease to end
    sweep.study._storage.flush_all_batches()
    summary = write_summary(sweep)
    if launched_as:
        client.set_tag(launched_as, "nfp.sweep.summary", summary["line"])
    say(f"study {s.study!r}: {summary['line']} (this worker ran {ran})")
    return summary


def new_trial(sweep: Sweep) -> bool:
    """Ask the study for a trial and run it once it holds a slot; False when another worker took the last slot."""
    trial = sweep.study.ask()
    run_id = trial._trial_id
    number = st.claim_slot(sweep.client, st.study_run_id(sweep.study), run_id, sweep.cfg.sweep.trials)
    if number is None:
        sweep.study._storage.flush_all_batches()
        sweep.client.delete_run(run_id)  # never a trial: the budget is spent
        return False
    name_trial(sweep, run_id, number)
    attempt = st.claim_attempt(sweep.client, sweep.client.get_run(run_id), sweep.worker)
    run_trial(sweep, trial, number, attempt=attempt)
    return True


def name_trial(sweep: Sweep, run_id: str, number: int) -> None:
    sweep.client.set_tag(run_id, "mlflow.runName", f"{sweep.cfg.sweep.study}-trial-{number:03d}")
    sweep.client.set_tag(run_id, st.STUDY_TAG, sweep.cfg.sweep.study)
    sweep.client.set_tag(run_id, st.SLOT_TAG, str(number))


def take_over(sweep: Sweep, run) -> bool:
    """Resume a trial whose worker was lost (from `run`, the read that found it lost), unless another worker took it
    first. A trial whose worker died before it held a slot gets a free one, or is deleted when none is left."""
    import optuna

    client, study_id, run_id = sweep.client, st.study_run_id(sweep.study), run.info.run_id
    held = [k for k, v in client.get_run(study_id).data.params.items() if k.startswith(st.SLOT) and v == run_id]
    if held:
        number = int(held[0][len(st.SLOT) :])
    else:
        number = st.claim_slot(client, study_id, run_id, sweep.cfg.sweep.trials)
        if number is None:
            client.delete_run(run_id)  # its worker died before it held a slot, and the budget is spent
            return True
    attempt = st.claim_attempt(client, run, sweep.worker)
    if attempt is None:
        return False
    if st.SLOT_TAG not in run.data.tags:
        name_trial(sweep, run_id, number)
    why = ("its worker stopped it (Ctrl-C or SIGTERM)" if run.data.tags.get(st.HEARTBEAT) == "0" else
           f"its worker was lost (no heartbeat for {sweep.cfg.sweep.lease_s:g} s)")  # fmt: skip
    say(f"trial {number:03d}: {why}; resuming it as attempt {attempt}")
    run_trial(sweep, optuna.trial.Trial(sweep.study, run_id), number, attempt=attempt, resumed=run)
    return True


def run_trial(sweep: Sweep, trial, number: int, *, attempt: int, resumed=None) -> None:
    """Train the trial in a process of its own and tell the study how it ended. A resumed trial trains with the
    overrides it started with (the space may have changed since)."""
    from optuna.trial import TrialState

    s, client, run_id = sweep.cfg.sweep, sweep.client, trial._trial_id
    trial_dir = storage.join(sweep.dir, f"trial-{number:03d}")
    shown = "?"
    try:
        if resumed is not None and st.OVERRIDES_TAG in resumed.data.tags:
            own = json.loads(resumed.data.tags[st.OVERRIDES_TAG])
        else:
            values = {dim.key: dim.suggest(trial) for dim in sweep.dimensions}
            own = [*(override(key, value) for key, value in values.items()), f"train.output_dir={trial_dir}",
                   "tracking.register_as=null", "tracking.alias=null"]  # fmt: skip
            # (the sweep registers its best trial's model, not every trial's)
            client.set_tag(run_id, st.OVERRIDES_TAG, json.dumps(own))
        overrides = [*sweep.overrides, *own]
        shown = ", ".join(o for o in own if not o.startswith(st.TRIAL_KEYS))
        sweep.study._storage.flush_all_batches()
        load_config(sweep.config_path, overrides)
    except (ConfigError, ValueError) as err:  # a combination the config refuses; a space changed under a trial
        return fail(sweep, trial, number, shown, first_line(err, 2000))
    log = trial_log(sweep, number, attempt)
    say(f"trial {number:03d} ({shown}): training, log in {log}")
    started, lost, process = time.monotonic(), threading.Event(), {}

    def on_lost() -> None:  # another worker took the trial over: stop this training, leave the trial to it
        lost.set()
        if "process" in process:
            process["process"].terminate()

    with st.heartbeat(client, run_id, s.lease_s, attempt, on_lost):
        try:
            code = train_process(sweep, run_id, overrides, log, process)
            if code == 0 and not lost.is_set() and (kept := offline_records(trial_dir)):
                # it lost the server for a while and kept what it could not log; the trial is scored from its run, so
                # a second `nfp train` of it (every epoch done: it only replays the backlog) logs that first
                say(f"trial {number:03d}: its training logged {kept} record(s) offline (the tracking server failed "
                    "it); replaying them")  # fmt: skip
                code = train_process(sweep, run_id, overrides, log, process)
        except BaseException:  # Ctrl-C, SIGTERM: the trial is left for the next worker to resume
            st.release(client, run_id, attempt)
            raise
    if lost.is_set():
        return say(f"trial {number:03d}: another worker took it over (this worker's heartbeat did not reach the "
                   "server for a lease); left to it")  # fmt: skip
    client.set_tag(run_id, st.TRAIN_S_TAG, f"{time.monotonic() - started:.1f}")
    with contextlib.suppress(Exception):  # the console of the trial, beside its run's other files
        client.log_artifact(run_id, str(log), "sweep")
    run = client.get_run(run_id)
    if code != 0 and ": in use by another nfp train (" in (reason := error_line(log, code, run)):
        # the worker this one took the trial from still trains it (cut off from the server, not dead): it stops at its
        # next heartbeat, seeing the trial is not its own; after a lease without beats the trial is taken over again
        return say(f"trial {number:03d}: still trained by its earlier worker ({reason}); left for later")
    if code != 0:
        return fail(sweep, trial, number, shown, reason)
    if st.PRUNED_TAG in run.data.tags:
        sweep.study.tell(trial, state=TrialState.PRUNED)
        return say(f"trial {number:03d} ({shown}): pruned, {run.data.tags[st.PRUNED_TAG]}")
    value = best_value(client, run_id, s.metric, s.direction)
    if value is None and (left := offline_records(trial_dir)):  # the server failed the replay too
        return fail(sweep, trial, number, shown, f"{s.metric} is not in its run yet: {left} record(s) its training "
                    f"could not log are in {storage.join(trial_dir, tracking.BACKLOG_DIR)}, which `nfp train` of the "
                    "trial replays")  # fmt: skip
    if value is None:  # a name no trial will log: stop the sweep rather than spend its budget
        logged = ", ".join(sorted(k for k in run.data.metrics if not k.startswith("system/")))
        fail(sweep, trial, number, shown, f"sweep.metric: {s.metric} was never logged by the trial's run")
        raise ConfigError(f"sweep.metric: got {s.metric!r}, which trial {number:03d}'s run did not log; it logged: "
                          f"{logged}")  # fmt: skip
    sweep.study.tell(trial, value)
    say(f"trial {number:03d} ({shown}): {s.metric} {value:.6g}")


def offline_records(trial_dir: str) -> int:
    """How many records the trial's training kept in its tracking backlog, not logged into its run."""
    return sum(name.endswith(".json") for name in storage.listdir(storage.join(trial_dir, tracking.BACKLOG_DIR)))


def fail(sweep: Sweep, trial, number: int, shown: str, reason: str) -> None:
    from optuna.trial import TrialState

    sweep.client.set_tag(trial._trial_id, "error", reason)
    sweep.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    sweep.client.set_terminated(trial._trial_id, status="FAILED")
    say(f"trial {number:03d} ({shown}): failed: {reason}")


def best_value(client, run_id: str, metric: str, direction: str) -> float | None:
    history = [m.value for m in client.get_metric_history(run_id, metric)]
    if not history:
        return None
    return min(history) if direction == "minimize" else max(history)


def error_line(log: Path, code: int, run) -> str:
    """Why a trial's training failed, in one line: its run's `error` tag, else its own last `error:` line."""
    if "error" in run.data.tags:
        return run.data.tags["error"]
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1].removeprefix("error: ")
    if code < 0:
        return f"nfp train was killed by signal {signal.Signals(-code).name}"
    return f"nfp train exited with {code}: {lines[-1] if lines else 'no output'}"


def trial_log(sweep: Sweep, number: int, attempt: int) -> Path:
    """Where the trial's training writes its console: beside the trials when they are local, else in a temp dir."""
    import tempfile

    base = storage.local_path(sweep.dir) if storage.is_local(sweep.dir) else Path(tempfile.gettempdir()) / "nfp-sweep"
    path = Path(base) / "logs" / f"trial-{number:03d}-attempt-{attempt}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def train_process(sweep: Sweep, run_id: str, overrides: list[str], log: Path, holder: dict) -> int:
    """`nfp train` of the trial; it dies with this worker (a killed worker leaves no training behind)."""
    import mlflow

    command = [sys.executable, "-m", "nfp", "train", *(["-c", str(sweep.config_path)] if sweep.config_path else [])]
    env = {
        **os.environ,
        "MLFLOW_RUN_ID": run_id,
        "MLFLOW_EXPERIMENT_ID": sweep.experiment_id,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        st.TRIAL_ENV: run_id,
    }
    with open(log, "ab") as out:
        process = subprocess.Popen([*command, *overrides], stdout=out, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=_die_with_parent)  # fmt: skip
        holder["process"] = process
        try:
            return process.wait()
        except BaseException:
            process.terminate()  # SIGTERM: the training keeps its last epoch's backup and stops
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            raise


def _die_with_parent() -> None:
    """In the trial's process, before exec: SIGKILL when the worker dies (Linux's PR_SET_PDEATHSIG)."""
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:  # not Linux: the trial's heartbeat still ends with its worker
        return
    if os.getppid() != parent:  # the worker died before the request was made
        os._exit(1)


def say(line: str) -> None:
    print(f"sweep: {line}", flush=True)


def start_workers(cfg, config_path, overrides: list[str], argv: list[str], workers: int) -> int:
    """`nfp sweep --workers N`: the study made once here, then N worker processes of this same command (`argv`, less
    --workers), one per GPU (CUDA_VISIBLE_DEVICES) where the machine has them; the worst exit code of theirs."""
    prepare(cfg, config_path, overrides)  # refuses what every worker would, and makes the study before they race to
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # the GPUs this command may use, when it was told
    gpus = [g for g in visible.split(",") if g.strip()] if visible is not None else list(map(str, range(_gpu_count())))
    first = int(os.environ.get(WORKER_ENV, "0") or 0) * workers  # a VM's rank among the sweep's VMs, if any
    processes = []
    for index in range(workers):
        env = {**os.environ, WORKER_ENV: str(first + index)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        processes.append(subprocess.Popen([sys.executable, "-m", "nfp", "sweep", *argv], env=env))
    try:
        codes = [p.wait() for p in processes]
    except BaseException:  # Ctrl-C reached the workers too (one process group): wait for them to release their trials
        for p in processes:
            with contextlib.suppress(BaseException):
                p.wait(timeout=90)
        raise
    return max(codes, key=abs)


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0
