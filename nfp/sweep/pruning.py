"""Inside a trial's `nfp train` (NFP_SWEEP_TRIAL names its run): a Keras callback that reports the trial's metric
to its study after each epoch and stops training when the study's pruner says the trial is worse than the others.
The run is tagged with why; its worker then ends it PRUNED (MLflow: KILLED)."""

from __future__ import annotations

import os

import keras

from nfp.sweep.study import TRIAL_ENV


def trial_pruning(cfg) -> keras.callbacks.Callback | None:
    """The pruning callback when this training is a sweep's trial and the sweep prunes; else None."""
    run_id = os.environ.get(TRIAL_ENV)
    if not run_id or cfg.sweep.pruner == "none":
        return None
    return Pruning(cfg, run_id)


class Pruning(keras.callbacks.Callback):
    """Reports `sweep.metric` at each epoch that has it (step: the epoch, from 1); prunes when the pruner says so."""

    def __init__(self, cfg, run_id: str):
        super().__init__()
        self.cfg, self.run_id, self.trial = cfg, run_id, None

    def on_train_begin(self, logs=None):
        import optuna

        from nfp.sweep import study as st

        storage = st.storage_class()(os.environ.get("MLFLOW_EXPERIMENT_ID") or st.experiment_id(self.cfg.tracking))
        study = optuna.load_study(study_name=self.cfg.sweep.study, storage=storage,
                                  sampler=optuna.samplers.RandomSampler(), pruner=st.make_pruner(self.cfg.sweep))  # fmt: skip
        self.trial = optuna.trial.Trial(study, self.run_id)

    def on_epoch_end(self, epoch, logs=None):
        metric = self.cfg.sweep.metric
        value = (logs or {}).get(metric)
        if value is None or self.trial is None:
            return
        self.trial.report(float(value), step=epoch + 1)
        if self.trial.should_prune():
            from nfp.sweep import study as st

            why = f"at epoch {epoch + 1}: {metric} {float(value):.6g} against the study's {self.cfg.sweep.pruner}"
            self.trial.study._storage._mlflow_client.set_tag(self.run_id, st.PRUNED_TAG, why)
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.trial is not None:
            self.trial.study._storage.flush_all_batches()
