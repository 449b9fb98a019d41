"""MLflow glue: one run per training job, logged from the chief only, resumable, never fatal mid-training.

Tracking is one small interface, `RunLogger` (logger.py), with a class per backend:
- `Inactive` (non-chief, tracking off): every call a no-op.
- `Online` (online.py): logs into the run through mlflow. A call the answering server refuses is tried once more
  (two runs writing one row at once lose a write); its first call that fails for good warns once, that call and every
  later one go to an `Offline` backlog, and training goes on.
- `Offline` (backlog.py): the backlog `<state_dir>/tracking_backlog/`, numbered records (`000007.json`, its files in
  `000007/`) written through nfp.storage (local or gs://), each with durable copies of what it logs: an artifact's
  files, an image as .npy, a model saved as .keras with its input example.
The job's next `start_run` (lifecycle.py) replays the backlog into the same run, in order, deleting each record once
it is logged.

- The run is the one `mlflow run` created (MLFLOW_RUN_ID), else the one saved in the job's state
  dir by an earlier attempt (resume after preemption), else a new one; its id is saved there.
- Metric steps are epochs counted from 1; a step already in the run is not logged again, so a
  resumed job never duplicates an epoch.
- checks.py refuses, before any work, what would make tracking fail; runs.py finds runs for every stage;
  training_run.py is what a training run logs (params, tags, its data, its results).
- Tracking imports no model code: a model to log comes with the module that logs it (`model_flavor`).
"""

from nfp.tracking.backlog import BACKLOG_DIR, Offline
from nfp.tracking.checks import (
    check_artifact_location,
    check_can_log,
    check_experiment_live,
    check_new_run_experiment,
    check_reachable,
    check_register_name,
)
from nfp.tracking.lifecycle import EXPERIMENT_KIND, start_run, worker_system_metrics
from nfp.tracking.logger import Inactive, RunLogger
from nfp.tracking.online import Online
from nfp.tracking.runs import RUN_ID_FILE, get_run, log_files

__all__ = [
    "BACKLOG_DIR",
    "EXPERIMENT_KIND",
    "RUN_ID_FILE",
    "Inactive",
    "Offline",
    "Online",
    "RunLogger",
    "check_artifact_location",
    "check_can_log",
    "check_experiment_live",
    "check_new_run_experiment",
    "check_reachable",
    "check_register_name",
    "get_run",
    "log_files",
    "start_run",
    "worker_system_metrics",
]
