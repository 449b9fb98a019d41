"""`nfp sweep`: hyperparameter search over nfp's config with Optuna, the study kept on the MLflow tracking server.

- space.py: `sweep.space` read, checked against the config loader, turned into each trial's overrides.
- study.py: the study as MLflow runs (MLflow's Optuna storage), an exact budget and lost trials taken over.
- worker.py: a worker's loop: a trial is an `nfp train` process in a child run; `--workers N` starts N of them.
- pruning.py: inside a trial's training, the Keras callback that reports to the study and prunes.
- summary.py: the study's summary in its parent run (best trial, figures, the best model registered).
"""
