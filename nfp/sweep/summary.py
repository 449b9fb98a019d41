"""The study's summary in its parent run: the best trial (its score, its run, its config as sweep/best.yaml), the
counts of each outcome, the optimisation history and the parameters' importances as figures (Optuna's), the trials
as a table; and, with tracking.register_as, the best trial's model registered. Each worker writes it when no trial
is left running: the last one's is the whole study's."""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from pathlib import Path

from nfp.config import load_config
from nfp.errors import first_line
from nfp.sweep import study as st


def write_summary(sweep) -> dict:
    from optuna.trial import TrialState

    s, client, study = sweep.cfg.sweep, sweep.client, sweep.study
    study_id = st.study_run_id(study)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}  # fmt: skip
    step = len(trials)
    for name, count in counts.items():
        client.log_metric(study_id, f"trials_{name}", count, step=step)
    summary = {"study_run_id": study_id, "trials": counts, "best": None}
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if complete:
        best = study.best_trial
        best_run = client.get_run(best._trial_id)
        summary["best"] = {"run_id": best._trial_id, "value": best.value, "params": best.params,
                           "name": best_run.data.tags.get("mlflow.runName")}  # fmt: skip
        client.log_metric(study_id, f"best_{s.metric}", best.value, step=step)
        client.set_tag(study_id, "nfp.sweep.best_run", best._trial_id)
        client.set_tag(study_id, "nfp.sweep.best_trial", summary["best"]["name"] or best._trial_id)
        # the best trial's values on the sweep's config: its own output dir and registration are the worker's
        overrides = [
            o for o in json.loads(best_run.data.tags.get(st.OVERRIDES_TAG, "[]")) if not o.startswith(st.TRIAL_KEYS)
        ]
        with tempfile.TemporaryDirectory(prefix="nfp-sweep-") as tmp:
            best_yaml = Path(tmp) / "best.yaml"
            config = load_config(sweep.config_path, [*sweep.overrides, *overrides])
            best_yaml.write_text(f"# the best trial of study {s.study!r}: run {best._trial_id}, {s.metric} "
                                 f"{best.value:.6g}\n" + config.to_yaml())  # fmt: skip
            client.log_artifact(study_id, str(best_yaml), "sweep")
            for path in figures(study, s.metric, Path(tmp)):
                client.log_artifact(study_id, str(path), "sweep")
            with contextlib.suppress(Exception):  # a table for people who read numbers (pandas, MLflow's dependency)
                table = Path(tmp) / "trials.csv"
                study.trials_dataframe().to_csv(table, index=False)
                client.log_artifact(study_id, str(table), "sweep")
        if sweep.cfg.tracking.register_as:
            summary["registered"] = register_best(sweep.cfg.tracking, best._trial_id, sweep.experiment_id)
    summary["line"] = ", ".join(f"{n} {k}" for k, n in counts.items() if n) + (
        f"; best {summary['best']['name']}: {s.metric} {summary['best']['value']:.6g}" if summary["best"] else ""
    )
    if not counts["running"] and len(trials) >= s.trials:
        client.set_terminated(study_id, status="FINISHED")
    return summary


def figures(study, metric: str, folder: Path) -> list[Path]:
    """Optuna's optimisation history and parameter importances as PNGs; a figure Optuna cannot draw yet (importances
    need two finished trials that differ) is left out with a warning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.exceptions import ExperimentalWarning

    paths = []
    for name, draw in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances)):  # fmt: skip
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                axes = draw(study, target_name=metric)
            path = folder / f"{name}.png"
            axes.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(axes.figure)
            paths.append(path)
        except Exception as err:  # noqa: BLE001 - a figure is a view of the study, not the study
            warnings.warn(f"sweep: no {name} figure yet ({first_line(err, 160)})", stacklevel=2)
    return paths


def register_best(tracking_cfg, run_id: str, experiment_id: str) -> str:
    """Register the best trial's logged model under tracking.register_as (once per run), with tracking.alias."""
    import mlflow

    client = mlflow.MlflowClient()
    name = tracking_cfg.register_as
    existing = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    if existing:
        version = existing[0].version
    else:
        models = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
        uri = f"models:/{models[0].model_id}" if models else f"runs:/{run_id}/model"
        version = mlflow.register_model(uri, name).version
    if tracking_cfg.alias:
        client.set_registered_model_alias(name, tracking_cfg.alias, version)
    return f"{name}/{version}"
