"""The study on the tracking server (MLflow's Optuna storage: the study a parent run, each trial a child run), and the
two things it lacks for many workers, made from MLflow's one atomic write — a param, which the server never lets
change once logged, so of two workers logging one key with different values exactly one succeeds:
- an exact budget: a trial runs only once it holds a slot `sweep.trial.NNN` (a param of the parent run, NNN <
  sweep.trials), and its slot number names its run and output dir;
- no trial RUNNING for ever: the worker running a trial renews a heartbeat tag on its run every lease/4 s; a trial
  whose heartbeat is older than sweep.lease_s lost its worker, and the first worker to log its next attempt param
  `sweep.attempt.N` takes it over (the same run and output dir: its training resumes from its last epoch)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
import warnings

import mlflow
from mlflow.exceptions import MlflowException

from nfp.errors import ConfigError, first_line
from nfp.sweep.space import as_text

TRIAL_ENV = "NFP_SWEEP_TRIAL"  # set by a worker for its trial's `nfp train`: the trial's run id
SLOT = "sweep.trial."  # + NNN: a param of the study's run, the trial run holding the slot
ATTEMPT = "sweep.attempt."  # + N: a param of a trial's run, the worker running its N-th attempt
HEARTBEAT = "nfp.sweep.heartbeat"  # a trial run's tag: unix time of its worker's last renewal
STUDY_TAG = "nfp.sweep.study"  # the study's run: "study"; a trial's run: its study's name
PRUNED_TAG = "nfp.sweep.pruned"  # a trial's run: why it was pruned (set by the trial's training)
SLOT_TAG = "nfp.sweep.slot"  # a trial's run: its slot number
TRAIN_S_TAG = "nfp.sweep.train_s"  # a trial's run: seconds its training process took (this attempt's)
TRIAL_KEYS = ("train.output_dir=", "tracking.register_as=", "tracking.alias=")  # overrides a worker adds to a trial
OVERRIDES_TAG = "nfp.sweep.overrides"  # a trial's run: the overrides its training ran with (JSON)


def storage_class():
    """MLflow's Optuna storage, made to agree across workers (imported late: optuna is only the sweep's)."""
    import datetime
    import json

    import optuna
    from mlflow.optuna.storage import MlflowStorage, mlflow_optuna_status_map
    from optuna.distributions import json_to_distribution
    from optuna.trial import FrozenTrial, TrialState

    class SweepStorage(MlflowStorage):
        def create_new_study(self, directions, study_name=None) -> str:
            study_id = super().create_new_study(directions, study_name)
            self._mlflow_client.set_tag(study_id, STUDY_TAG, "study")
            return study_id

        def _search_runs_by_name(self, run_name: str):
            # the oldest study run of that name: workers that created one at once all settle on the same
            return self._mlflow_client.search_runs(
                experiment_ids=[self._experiment_id],
                filter_string=f"tags.mlflow.runName = '{run_name}' and tags.`{STUDY_TAG}` = 'study'",
                order_by=["attributes.start_time ASC"],
            )

        def get_trial(self, trial_id):
            self._flush_batch(trial_id)
            return self._frozen(self._mlflow_client.get_run(trial_id))

        def get_all_trials(self, study_id, deepcopy=True, states=None):
            # one search for every trial's run, then each trial from what it returned (MLflow's storage fetches each
            # run three more times); in the order they were numbered, as Optuna's history reads them
            self.flush_all_batches()
            runs = self._mlflow_client.search_runs(
                [self._experiment_id], filter_string=f"tags.mlflow.parentRunId = '{study_id}'", max_results=50_000
            )
            trials = [self._frozen(run) for run in runs]
            trials = [t for t in trials if states is None or t.state in states]
            return sorted(trials, key=lambda t: (t.number, t.datetime_start))

        def _frozen(self, run):
            """The trial a run holds, as MLflow's storage reads it, but from the one run: its number is its slot (MLflow's
            storage numbers trials by client clocks, which two workers can tie); a trial its training ended FINISHED
            before its worker logged the value is running, not a COMPLETE trial without a value (which the samplers
            of other workers could not read)."""
            tags, metrics = run.data.tags, run.data.metrics
            distributions = {k: json_to_distribution(v) for k, v in json.loads(tags["param_directions"]).items()}
            params = {
                key[len("param_internal_val_") :]: distributions[key[len("param_internal_val_") :]].to_external_repr(
                    float(json.loads(value))
                )
                for key, value in tags.items()
                if key.startswith("param_internal_val_")
            }
            values = [metrics["value"]] if "value" in metrics else None
            state = mlflow_optuna_status_map[run.info.status]
            if without_outcome(run):
                state = TrialState.RUNNING
            history = self._mlflow_client.get_metric_history(run.info.run_id, "intermediate_value")
            end = run.info.end_time
            return FrozenTrial(
                number=int(tags.get(SLOT_TAG, tags.get("numbers", 0))),
                trial_id=run.info.run_id,
                state=state,
                value=None,
                values=values,
                datetime_start=datetime.datetime.fromtimestamp(run.info.start_time / 1000),
                datetime_complete=datetime.datetime.fromtimestamp(end / 1000) if end else None,
                params=params,
                distributions=distributions,
                user_attrs={k[5:]: json.loads(v) for k, v in tags.items() if k.startswith("user_")},
                system_attrs={k[4:]: json.loads(v) for k, v in tags.items() if k.startswith("sys_")},
                intermediate_values={m.step: m.value for m in history},
            )

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nfp says what each trial did, in one line
    return SweepStorage


def open_study(sweep, experiment_id: str, dimensions=(), seed_offset: int = 0):
    """The study `sweep.study` of the experiment: loaded, or made (several workers making it at once keep the oldest
    study run and delete theirs); its sampler over `dimensions` (nfp.sweep.space)."""
    import optuna

    storage = storage_class()(experiment_id)
    study_id = storage.get_study_id_by_name_if_exists(sweep.study)
    if study_id is None:
        made = storage.create_new_study([optuna.study.StudyDirection[sweep.direction.upper()]], sweep.study)
        study_id = storage.get_study_id_from_name(sweep.study)
        if study_id != made:
            storage._mlflow_client.delete_run(made)
    directions = storage.get_study_directions(study_id)
    if directions[0].name.lower() != sweep.direction:
        raise ConfigError(f"sweep.direction: got {sweep.direction}, but study {sweep.study!r} (run {study_id}) "
                          f"was made to {directions[0].name.lower()}; name another sweep.study")  # fmt: skip
    seed = sweep.seed + seed_offset + storage.get_n_trials(study_id)
    return optuna.load_study(
        study_name=sweep.study,
        storage=storage,
        sampler=make_sampler(sweep, dimensions, seed),
        pruner=make_pruner(sweep),
    )


def make_sampler(sweep, dimensions=(), seed: int = 0):
    import optuna

    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.sampler == "grid":
        grid = {}
        for dim in dimensions:
            if dim.kind == "int":
                grid[dim.key] = list(range(dim.bounds[0], dim.bounds[1] + 1))
            else:
                grid[dim.key] = [as_text(v) for v in dim.bounds]
        return grid_without_stop(optuna)(grid, seed=sweep.seed)  # one order of the grid for every worker
    # a running trial's point counts as taken (its value a pessimistic guess): parallel workers spread out
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def grid_without_stop(optuna):
    """Optuna's grid sampler, without its `study.stop()` once the grid is visited (outside `optimize` that raises
    at the tell): the budget (sweep.trials) ends the sweep, and a grid smaller than it is sampled again."""

    class GridWithoutStop(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return GridWithoutStop


def make_pruner(sweep):
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=sweep.prune_after_trials, n_warmup_steps=sweep.prune_after_epochs
        )
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def study_run_id(study) -> str:
    return study._study_id


def _log_once(client, run_id: str, key: str, value: str) -> bool:
    """Log param `key` = `value` unless the run has it with another value: True when the run now holds this value."""
    try:
        client.log_param(run_id, key, value)
        return True
    except MlflowException as err:
        if err.error_code == "INVALID_PARAMETER_VALUE" and "Changing param values is not allowed" in str(err):
            return False
        raise


def claim_slot(client, study_id: str, trial_run_id: str, budget: int) -> int | None:
    """The first free slot below `budget`, now held by `trial_run_id`; None when every slot is taken."""
    taken = client.get_run(study_id).data.params
    for number in range(budget):
        key = slot_key(number)
        if key in taken:
            continue
        if _log_once(client, study_id, key, trial_run_id):
            return number
    return None


def slot_key(number: int) -> str:
    return f"{SLOT}{number:03d}"


def free_slots(client, study_id: str, budget: int) -> int:
    params = client.get_run(study_id).data.params
    return sum(slot_key(n) not in params for n in range(budget))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def attempts(run) -> int:
    return sum(key.startswith(ATTEMPT) for key in run.data.params)


def claim_attempt(client, run, worker: str) -> int | None:
    """Log this worker as the trial's next attempt after those in `run` (the same read that found it free or lost),
    with the time, and renew its heartbeat at once: its number, or None when another worker logged it first."""
    attempt = 1 + attempts(run)
    if not _log_once(client, run.info.run_id, f"{ATTEMPT}{attempt}", f"{worker} {time.time():.3f}"):
        return None
    client.set_tag(run.info.run_id, HEARTBEAT, f"{time.time():.3f}")
    return attempt


def owner_attempt(client, run_id: str) -> int:
    """The trial's latest attempt number (whoever holds it)."""
    return attempts(client.get_run(run_id))


def running_trials(client, experiment_id: str, study_id: str) -> list:
    """The study's trials without an outcome yet: RUNNING, or FINISHED by their training but not yet scored (the
    state SweepStorage reads as running)."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{study_id}'", max_results=50_000
    )
    return [r for r in runs if without_outcome(r)]


def without_outcome(run) -> bool:
    """RUNNING; FINISHED by its training but not scored yet; or KILLED without being pruned (its training stopped by
    a signal that reached it before its worker could release it): a trial still to finish."""
    status, tags = run.info.status, run.data.tags
    return (
        status == "RUNNING"
        or (status == "FINISHED" and "value" not in run.data.metrics)
        or (status == "KILLED" and PRUNED_TAG not in tags)
    )


def is_stale(run, lease_s: float, now: float | None = None) -> bool:
    """No heartbeat for `lease_s` seconds (a run never renewed counts from its start, or its last attempt's claim); a
    heartbeat of 0 is a trial its worker released."""
    now = time.time() if now is None else now
    beat = run.data.tags.get(HEARTBEAT)
    if beat == "0":
        return True
    claims = [float(v.rsplit(" ", 1)[-1]) for k, v in run.data.params.items() if k.startswith(ATTEMPT) and " " in v]
    last = max([float(beat) if beat is not None else 0.0, run.info.start_time / 1000, *claims])
    return now - last > lease_s


@contextlib.contextmanager
def heartbeat(client, run_id: str, lease_s: float, attempt: int, on_lost):
    """Renew the trial's heartbeat every lease/4 s while the block runs, as long as `attempt` is the trial's latest:
    when another worker took the trial over (this worker's beats did not reach the server for a lease), call
    `on_lost` once and stop. A failing renewal is a warning: the server may be back before the lease ends."""
    stop = threading.Event()

    def beat() -> None:
        warned = False
        while True:
            try:
                if owner_attempt(client, run_id) != attempt:
                    on_lost()
                    return
                client.set_tag(run_id, HEARTBEAT, f"{time.time():.3f}")
            except Exception as err:  # noqa: BLE001 - a missed beat costs nothing until the lease ends
                if not warned:
                    warnings.warn(f"sweep: trial heartbeat not renewed ({first_line(err, 160)})", stacklevel=1)
                    warned = True
            if stop.wait(lease_s / 4):
                return

    thread = threading.Thread(target=beat, name="nfp-sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def release(client, run_id: str, attempt: int) -> None:
    """A trial this worker stops without an outcome (Ctrl-C, SIGTERM): RUNNING with no heartbeat, so the next worker
    of the study takes it over at once, resuming it (unless it is another worker's by now)."""
    with contextlib.suppress(BaseException):
        if owner_attempt(client, run_id) != attempt:
            return
        client.set_tag(run_id, HEARTBEAT, "0")
        client.update_run(run_id, status="RUNNING")


def experiment_id(tracking) -> str:
    """The experiment `tracking.experiment` (MLFLOW_EXPERIMENT_ID under `mlflow run`), made when missing."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    experiment = mlflow.get_experiment_by_name(tracking.experiment)
    return experiment.experiment_id if experiment else mlflow.create_experiment(tracking.experiment)
