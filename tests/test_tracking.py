"""Tracking: one run per job, resumable, FAILED on errors, never fatal when the server dies."""

import json
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import BUCKET, MlflowServer, free_port

from nfp import tracking
from nfp.config import load_config
from nfp.errors import TrackingError, redact
from nfp.inference import serving


@pytest.fixture
def cfg():
    return load_config(None, ["tracking.experiment=t-exp"])


def _backlog(state_dir) -> list[dict]:
    """The backlog's complete records, oldest first."""
    folder = state_dir / tracking.BACKLOG_DIR
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _runs(experiment="t-exp"):
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


def test_the_suites_mlflow_sends_no_usage_data():
    """No test's MLflow reaches past 127.0.0.1: its telemetry is off in the test processes and their children."""
    from mlflow.telemetry.utils import is_telemetry_disabled

    assert is_telemetry_disabled()


def test_new_run_finishes_and_saves_its_id(cfg, tmp_path):
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        assert run.active
        run.log_metrics({"loss": 1.0}, step=1)
    (only,) = _runs()
    assert only.info.status == "FINISHED"
    assert (tmp_path / tracking.RUN_ID_FILE).read_text() == only.info.run_id


def test_the_experiment_is_marked_as_model_training_unless_its_kind_is_set(cfg, tmp_path):
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path / "a"):
        pass
    assert mlflow.get_experiment_by_name("t-exp").tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
    theirs = mlflow.create_experiment("t-genai", tags={tracking.EXPERIMENT_KIND: "genai_development"})
    with tracking.start_run(
        load_config(None, ["tracking.experiment=t-genai"]), is_chief=True, state_dir=tmp_path / "b"
    ):
        pass
    assert mlflow.get_experiment(theirs).tags[tracking.EXPERIMENT_KIND] == "genai_development"


def test_an_experiment_that_cannot_be_tagged_costs_a_warning_not_the_run(cfg, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("Permission denied")

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", refuse)
    with pytest.warns(UserWarning, match=r"could not tag experiment \d+ as model training \(Permission denied\)"):
        with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
            run.log_metrics({"loss": 1.0}, step=1)
    assert _runs()[0].info.status == "FINISHED"


def test_an_experiment_another_run_tags_at_the_same_moment_costs_no_warning(cfg, tmp_path, monkeypatch):
    """Two runs of a new experiment starting together (a sweep's first trials) both tag it; the store inserts the tag
    row for one and refuses the other's (UNIQUE constraint): the loser finds the tag set, and says nothing."""
    real = mlflow.MlflowClient.set_experiment_tag

    def loses_the_race(self, experiment_id, key, value):
        real(self, experiment_id, key, value)  # the other run's
        raise mlflow.exceptions.MlflowException(
            "UNIQUE constraint failed: experiment_tags.key, experiment_tags.experiment_id"
        )

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", loses_the_race)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path):
            pass
    assert not [w for w in caught if "could not tag experiment" in str(w.message)]
    assert mlflow.get_experiment_by_name("t-exp").tags[tracking.EXPERIMENT_KIND] == "custom_model_development"


def test_run_is_tagged_with_the_git_commit(cfg, tmp_path):
    import subprocess

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path):
        pass
    assert _runs()[0].data.tags["mlflow.source.git.commit"] == head


def test_saved_run_id_from_another_store_starts_a_new_run_with_a_warning(cfg, tmp_path):
    (tmp_path / tracking.RUN_ID_FILE).write_text("0123456789abcdef0123456789abcdef")
    with pytest.warns(UserWarning, match="is not in the tracking store"):
        with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
            pass
    assert run.run_id != "0123456789abcdef0123456789abcdef"
    assert (tmp_path / tracking.RUN_ID_FILE).read_text() == run.run_id


def test_restart_resumes_the_same_run_without_duplicate_steps(cfg, tmp_path):
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        run.log_params({"a": 1})
        run.log_metrics({"loss": 1.0}, step=1)
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        run.log_params({"a": 1, "b": 2})
        run.log_metrics({"loss": 0.9}, step=1)  # already logged: skipped
        run.log_metrics({"loss": 0.5}, step=2)
    (only,) = _runs()
    history = mlflow.MlflowClient().get_metric_history(only.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 1.0), (2, 0.5)]
    assert only.data.params == {"a": "1", "b": "2"}


def test_crash_ends_failed_with_the_error_as_a_tag(cfg, tmp_path):
    with pytest.raises(RuntimeError):
        with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path):
            raise RuntimeError("out of memory on GPU 3")
    (only,) = _runs()
    assert only.info.status == "FAILED"
    assert only.data.tags["error"] == "RuntimeError: out of memory on GPU 3"


def test_non_chief_and_disabled_log_nothing(tmp_path):
    for is_chief, overrides in ((False, []), (True, ["tracking.enabled=false"])):
        cfg = load_config(None, ["tracking.experiment=t-exp", *overrides])
        with tracking.start_run(cfg, is_chief=is_chief, state_dir=tmp_path) as run:
            assert not run.active
            run.log_metrics({"loss": 1.0}, step=1)
            run.log_params({"a": 1})
    assert _runs() == []
    assert not (tmp_path / tracking.RUN_ID_FILE).exists()


def test_keras_callback_logs_epoch_scalars_at_epoch_plus_one(cfg, tmp_path):
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        callback = run.keras_callback()
        callback.on_epoch_end(0, {"loss": 0.3, "val_loss": 0.4, "learning_rate": np.float32(1e-3)})
        callback.on_epoch_end(1, {"loss": 0.2, "val_loss": 0.3, "learning_rate": 5e-4})
    client = mlflow.MlflowClient()
    (only,) = _runs()
    assert [m.step for m in client.get_metric_history(only.info.run_id, "val_loss")] == [1, 2]
    assert client.get_metric_history(only.info.run_id, "learning_rate")[-1].value == pytest.approx(5e-4)


def test_unreachable_server_is_a_one_line_error_within_seconds(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"^MLflow tracking server at http://127.0.0.1:\d+ is not usable") as info:
        tracking.check_reachable()
    assert "\n" not in str(info.value)
    assert time.monotonic() - start < 30


def test_unknown_experiment_id_is_refused(monkeypatch):
    with pytest.raises(TrackingError, match="experiment id 987654"):
        tracking.check_reachable("987654")


def test_bad_register_name_is_refused():
    with pytest.raises(TrackingError, match="tracking.register_as: got 'a/b'"):
        tracking.check_register_name("a/b")
    tracking.check_register_name("moving-mnist-convlstm")


def test_unwritable_artifact_location_is_refused_before_training(tmp_path, tiny_overrides):
    from nfp.training.train import train

    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a directory cannot be made under a file, even as root
    mlflow.create_experiment("blocked", artifact_location=str(blocker / "artifacts"))
    cfg = load_config(None, [*tiny_overrides, "tracking.experiment=blocked"])
    with pytest.raises(
        TrackingError, match=r"^MLflow artifact location .*a-file/artifacts of experiment 'blocked' is not writable"
    ):
        train(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_a_servers_proxied_artifact_location_is_not_taken_for_a_local_path(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(None)
    mlflow.MlflowClient().create_experiment("proxied-artifacts")
    assert mlflow.get_experiment_by_name("proxied-artifacts").artifact_location.startswith("mlflow-artifacts:")
    work = tmp_path / "read-only-work"
    work.mkdir()
    monkeypatch.chdir(work)
    tracking.check_artifact_location("proxied-artifacts")
    assert list(work.iterdir()) == []  # no ./mlflow-artifacts:/… tree, and no probe file


def test_credentials_are_redacted():
    assert redact("https://alice:s3cret@mlflow.example.com/x") == "https://***@mlflow.example.com/x"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_server_dying_mid_run_warns_keeps_a_backlog_and_replays_it(cfg, tmp_path, monkeypatch):
    server = MlflowServer(tmp_path / "srv")
    (tmp_path / "srv").mkdir()
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    state = tmp_path / "state"
    try:
        with tracking.start_run(cfg, is_chief=True, state_dir=state) as run:
            run.log_metrics({"loss": 1.0}, step=1)
            server.stop()
            with pytest.warns(UserWarning, match="MLflow logging failed") as caught:
                run.log_metrics({"loss": 0.5}, step=2)
                run.log_metrics({"loss": 0.25}, step=3)  # offline now: straight to the backlog, no second warning
            assert len([w for w in caught if "MLflow logging failed" in str(w.message)]) == 1
        assert [(r["kind"], r.get("step")) for r in _backlog(state)] == [("metrics", 2), ("metrics", 3)]
        server.start()
        with tracking.start_run(cfg, is_chief=True, state_dir=state) as run:
            pass
        history = mlflow.MlflowClient().get_metric_history(run.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 0.25)]
        assert mlflow.get_run(run.run_id).info.status == "FINISHED"
        assert not (state / tracking.BACKLOG_DIR).exists()
    finally:
        server.stop()


def test_logged_model_serves_the_rollout_and_still_loads_as_keras(cfg, tmp_path):
    import keras

    from nfp.models.convlstm.model import rollout

    model = keras.Sequential([keras.Input((None, 8, 8, 1)), keras.layers.Conv3D(1, 1, activation="sigmoid")])
    example = np.random.rand(1, 3, 8, 8, 1).astype(np.float32)
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path, model_flavor=serving) as run:
        run.log_model(model, input_example=example, horizon=4)
    assert not (tmp_path / tracking.BACKLOG_DIR).exists(), "log_model failed and went to the backlog"
    (logged,) = mlflow.search_logged_models(output_format="list", experiment_ids=[_runs()[0].info.experiment_id])
    info = mlflow.models.get_model_info(logged.model_uri)
    signature = info.signature.to_dict()
    assert json.loads(signature["outputs"])[0]["tensor-spec"]["shape"] == [-1, -1, 8, 8, 1]  # (batch, horizon, …)
    assert json.loads(signature["params"]) == [{"name": "horizon", "default": 4, "shape": None, "type": "long"}]
    assert info.saved_input_example_info is not None and set(info.flavors) == {"python_function", "keras"}
    served = mlflow.pyfunc.load_model(logged.model_uri)
    np.testing.assert_allclose(served.predict(example), rollout(model, example, 4), atol=1e-6)
    assert served.predict(np.zeros((2, 5, 8, 8, 1), np.uint8), params={"horizon": 2}).shape == (2, 2, 8, 8, 1)
    as_keras = mlflow.keras.load_model(logged.model_uri)  # the same file, for people who want the Keras model
    np.testing.assert_allclose(as_keras.predict(example, verbose=0), model.predict(example, verbose=0), rtol=1e-5)


def test_a_logged_nfp_model_names_its_requirements_quietly(cfg, tmp_path, capfd, caplog):
    """MLflow's requirement inference cannot load a model of nfp's layers (its subprocess does not import them): the
    requirements are given, so no warning, no keras-only fallback, and no progress bar from the example's check."""
    import keras
    import tensorflow as tf

    from nfp.models.convlstm.model import build_model

    model_cfg = load_config(None, ["model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]"]).model
    model = build_model(model_cfg, image_size=8)
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path, model_flavor=serving) as run:
        run.log_model(model, input_example=np.zeros((1, 3, 8, 8, 1), np.float32))
    (logged,) = mlflow.search_logged_models(output_format="list", experiment_ids=[_runs()[0].info.experiment_id])
    requirements = mlflow.artifacts.load_text(f"{logged.artifact_location}/requirements.txt").split()
    assert {f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"} <= set(requirements)
    out, err = capfd.readouterr()
    assert "inferring pip requirements" not in err + caplog.text
    assert "\x1b[" not in out + err and "step" not in out  # no Keras progress bar
    assert keras.config.is_interactive_logging_enabled()  # restored


def test_a_successful_rerun_clears_the_error_of_a_failed_attempt(cfg, tmp_path):
    with pytest.raises(RuntimeError):
        with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path):
            raise RuntimeError("disk on fire")
    (failed,) = _runs()
    assert failed.info.status == "FAILED" and "disk on fire" in failed.data.tags["error"]
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path):  # the same job again: the same run
        pass
    (run,) = _runs()
    assert run.info.status == "FINISHED" and "error" not in run.data.tags


def test_under_mlflow_run_a_killed_attempts_run_is_ended_and_the_experiment_named(cfg, tmp_path, monkeypatch, capsys):
    earlier = mlflow.MlflowClient().create_run(mlflow.create_experiment("t-exp")).info.run_id  # RUNNING forever
    (tmp_path / tracking.RUN_ID_FILE).write_text(earlier)
    launched = mlflow.MlflowClient().create_run("0").info.run_id  # `mlflow run` without --experiment-name: Default
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        assert run.run_id == launched
    old = mlflow.get_run(earlier)
    assert old.info.status == "KILLED" and old.data.tags["nfp.continued_in_run"] == launched
    err = capsys.readouterr().err
    assert f"MLflow run {earlier} of the earlier attempt ended KILLED; this job continues in run {launched}" in err
    assert "of experiment 'Default', which `mlflow run` chose; tracking.experiment 't-exp' applies outside" in err


# --------------------------------------------------------------------------- backends and the backlog
def _refuse(*args, **kwargs):
    raise ConnectionError("connection refused")


def _artifact_paths(run_id: str, path: str | None = None) -> set[str]:
    client, found = mlflow.MlflowClient(), set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return found


def _loss_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss"))


@pytest.mark.no_mlflow_store
def test_the_inactive_backend_logs_nothing_and_names_no_run(tmp_path):
    run = tracking.Inactive()
    assert (run.active, run.run_id, run.ui_url) == (False, None, None)
    run.log_params({"a": 1})
    run.set_tags({"t": "x"})
    run.log_metrics({"loss": 1.0}, step=1)
    run.log_artifact(tmp_path / "absent.txt", "logs")
    run.log_image(np.zeros((4, 4, 3), np.uint8), "predictions/clip_0", step=0)
    run.log_model(None, np.zeros((1, 2, 8, 8, 1), np.float32))
    run.keras_callback().on_epoch_end(0, {"loss": 1.0})
    assert list(tmp_path.iterdir()) == []  # no backlog, no run id, not even a store
    assert _runs() == []


def test_online_warns_once_and_from_its_first_failure_on_logs_into_the_backlog(cfg, tmp_path, monkeypatch):
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        assert isinstance(run, tracking.Online) and run.offline is None
        run.log_metrics({"loss": 1.0}, step=1)
        monkeypatch.setattr(mlflow, "log_metrics", _refuse)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.log_metrics({"loss": 0.5}, step=2)  # fails: this record goes to the backlog too
            run.set_tags({"t": "x"})  # would work, but the logger is offline now
            run.log_params({"p": 1})
        assert [str(w.message) for w in caught] == [
            "MLflow logging failed (metrics: connection refused); training continues, "
            f"unlogged records go to {tmp_path / tracking.BACKLOG_DIR}"
        ]
        assert isinstance(run.offline, tracking.Offline)
    assert [r["kind"] for r in _backlog(tmp_path)] == ["metrics", "tags", "params"]
    logged = mlflow.get_run(run.run_id).data
    assert "t" not in logged.tags and "p" not in logged.params


def test_a_write_refused_while_the_server_answers_is_tried_once_more_and_tracking_stays_online(
    cfg, tmp_path, monkeypatch
):
    """Two trainings logging one data set into an experiment at once (a sweep's first trials): MLflow checks for the
    dataset row, then inserts it, so one of them is refused with a UNIQUE constraint error, which once sent that run's
    every later record to the backlog. The second try finds the row: no warning, no backlog. A server that does not
    answer gets no second try."""
    real, calls = mlflow.log_input, []

    def loses_the_race_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
                "datasets.digest",
                error_code=mlflow.protos.databricks_pb2.BAD_REQUEST,
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", loses_the_race_once)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
            run.log_dataset("video", "abc123", str(tmp_path / "videos"), [6, 16, 16, 3], {"train": 4})
            run.log_metrics({"loss": 1.0}, step=1)
            assert run.offline is None
    assert len(calls) == 2 and not [w for w in caught if "MLflow logging failed" in str(w.message)]
    (dataset,) = mlflow.get_run(run.run_id).inputs.dataset_inputs
    assert dataset.dataset.digest == "abc123"
    assert _loss_steps(run.run_id) == [1] and not _backlog(tmp_path)

    calls.clear()
    monkeypatch.setattr("nfp.tracking.online.server_answers", lambda run_id: False)
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as again:
        with pytest.warns(UserWarning, match=r"MLflow logging failed \(dataset: .*UNIQUE constraint failed"):
            again.log_dataset("video", "def456", str(tmp_path / "videos"), [6, 16, 16, 3], {"train": 4})
    assert len(calls) == 1 and [r["kind"] for r in _backlog(tmp_path)] == ["dataset"]


def test_offline_records_keep_copies_so_temp_files_images_plots_and_models_arrive_on_replay(cfg, tmp_path, monkeypatch):
    import keras
    from matplotlib.figure import Figure
    from PIL import Image

    state = tmp_path / "state"
    model = keras.Sequential([keras.Input((None, 8, 8, 1)), keras.layers.Conv3D(1, 1, activation="sigmoid")])
    example = np.random.rand(1, 3, 8, 8, 1).astype(np.float32)
    image = np.random.randint(0, 256, (8, 8, 3), np.uint8)
    fig = Figure()
    fig.subplots().plot([3, 1, 2])
    with tracking.start_run(cfg, is_chief=True, state_dir=state, model_flavor=serving) as run:
        with monkeypatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
            mp.setattr(mlflow, "log_artifact", _refuse)
            Path(tmp, "resolved.yaml").write_text("a: 1\n")
            Path(tmp, "tb/train").mkdir(parents=True)
            Path(tmp, "tb/train/events.1").write_bytes(b"xyz")
            with pytest.warns(UserWarning, match=r"MLflow logging failed \(artifact: connection refused\)"):
                run.log_artifact(Path(tmp, "resolved.yaml"), "config")
            run.log_artifact(Path(tmp, "tb"), "tensorboard")
            fig.savefig(Path(tmp, "history.png"))  # as training's results log their loss curves
            run.log_artifact(Path(tmp, "history.png"), "plots")
        assert not Path(tmp).exists()  # what was logged is gone before the replay
        run.log_image(image, "predictions/clip_0", step=3)
        run.log_model(model, input_example=example, horizon=2)  # the default horizon replays too
    assert [r["kind"] for r in _backlog(state)] == ["artifact", "artifact", "artifact", "image", "model"]

    with tracking.start_run(cfg, is_chief=True, state_dir=state, model_flavor=serving) as again:
        assert again.offline is None
    assert again.run_id == run.run_id and not (state / tracking.BACKLOG_DIR).exists()
    artifacts = _artifact_paths(run.run_id)
    assert {"config/resolved.yaml", "tensorboard/train/events.1", "plots/history.png"} <= artifacts
    assert mlflow.artifacts.load_text(f"runs:/{run.run_id}/config/resolved.yaml") == "a: 1\n"
    (png,) = [p for p in artifacts if p.startswith("images/predictions~clip_0+step+3+") and p.endswith(".png")]
    downloaded = mlflow.artifacts.download_artifacts(f"runs:/{run.run_id}/{png}", dst_path=str(tmp_path / "dl"))
    np.testing.assert_array_equal(np.asarray(Image.open(downloaded).convert("RGB")), image)
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[again.experiment_id], filter_string=f"source_run_id = '{run.run_id}'", output_format="list"
    )
    loaded = mlflow.pyfunc.load_model(logged.model_uri)
    from nfp.models.convlstm.model import rollout

    np.testing.assert_allclose(loaded.predict(example), rollout(model, example, 2), atol=1e-6)


def test_a_replay_the_server_breaks_off_keeps_the_rest_and_loses_or_repeats_nothing(cfg, tmp_path, monkeypatch):
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        with monkeypatch.context() as mp, pytest.warns(UserWarning, match="MLflow logging failed"):
            mp.setattr(mlflow, "log_metrics", _refuse)
            for step in (1, 2, 3, 4):
                run.log_metrics({"loss": step / 10}, step=step)
            run.set_tags({"after": "4"})
    real = mlflow.log_metrics

    def dies_at_step_3(metrics, step=None, **kwargs):
        if step == 3:
            raise ConnectionError("connection reset")
        return real(metrics, step=step, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(mlflow, "log_metrics", dies_at_step_3)
        for where in ("nfp.tracking.backlog", "nfp.tracking.online"):  # the server died with that call
            mp.setattr(f"{where}.server_answers", lambda run_id: False)
        with pytest.warns(UserWarning, match=r"MLflow logging failed \(replaying metrics: connection reset\)"):
            with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path):
                pass
    assert _loss_steps(run.run_id) == [1, 2]
    assert [(r["kind"], r.get("step")) for r in _backlog(tmp_path)] == [("metrics", 3), ("metrics", 4), ("tags", None)]

    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path):
        pass
    history = mlflow.MlflowClient().get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]  # each once
    assert mlflow.get_run(run.run_id).data.tags["after"] == "4"
    assert not (tmp_path / tracking.BACKLOG_DIR).exists()


def test_a_record_the_answering_server_refuses_is_dropped_not_blocking_the_rest(cfg, tmp_path, monkeypatch):
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        with monkeypatch.context() as mp, pytest.warns(UserWarning, match="MLflow logging failed"):
            mp.setattr(mlflow, "set_tags", _refuse)
            run.set_tags({"bad": "x"})
        run.log_metrics({"loss": 1.0}, step=1)

    def refuse_for_good(tags):
        raise mlflow.exceptions.MlflowException("INVALID_PARAMETER_VALUE: bad tag")

    with monkeypatch.context() as mp:
        mp.setattr(mlflow, "set_tags", refuse_for_good)
        with pytest.warns(UserWarning, match=r"record 000001 \(tags\) refused by the tracking server \(.*bad tag\)"):
            with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as again:
                assert again.offline is None  # the server answers: tracking stays online
    assert _loss_steps(run.run_id) == [1]
    assert not (tmp_path / tracking.BACKLOG_DIR).exists()


def test_a_record_killed_mid_write_is_never_replayed_and_numbering_goes_on_after_it(cfg, tmp_path):
    folder = tmp_path / tracking.BACKLOG_DIR
    tracking.Offline(str(folder)).log_metrics({"loss": 1.0}, step=1)
    (folder / "000002").mkdir()
    (folder / "000002/image.npy").write_bytes(b"\x93NUMPY")  # killed before its JSON was written
    (folder / ".000003.json.tmp-0123abcd").write_text('{"kind": "met')  # killed before the rename
    tracking.Offline(str(folder)).log_metrics({"loss": 0.5}, step=2)
    assert sorted(p.name for p in folder.iterdir()) == [".000003.json.tmp-0123abcd", "000001.json", "000002",
                                                        "000003.json"]  # fmt: skip
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        pass
    history = mlflow.MlflowClient().get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5)]
    assert not folder.exists()


def test_a_backlog_that_cannot_be_written_costs_one_warning_not_the_training(tmp_path):
    (tmp_path / "a-file").write_text("")  # no directory can be made under it
    offline = tracking.Offline(str(tmp_path / "a-file" / tracking.BACKLOG_DIR))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        offline.log_metrics({"loss": 1.0}, step=1)
        offline.log_image(np.zeros((4, 4, 3), np.uint8), "predictions/clip_0", step=1)
    (only,) = [str(w.message) for w in caught]
    assert "a-file/tracking_backlog could not be written" in only and "the log_metrics record is lost" in only


def test_a_backlog_on_gcs_outlives_the_machine_and_is_replayed_from_there(emulator, cfg, tmp_path, monkeypatch):
    import uuid

    from nfp import storage

    state = f"gs://{BUCKET}/job-{uuid.uuid4().hex[:8]}"
    backlog = f"{state}/{tracking.BACKLOG_DIR}"
    image = np.random.randint(0, 256, (8, 8, 3), np.uint8)
    with tracking.start_run(cfg, is_chief=True, state_dir=state) as run:
        with monkeypatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
            mp.setattr(mlflow, "log_artifact", _refuse)
            Path(tmp, "history.csv").write_text("epoch\n1\n")
            with pytest.warns(UserWarning, match=f"unlogged records go to {backlog}"):
                run.log_artifact(Path(tmp, "history.csv"), "logs")
        run.log_image(image, "predictions/clip_0", step=1)
    assert storage.listdir(backlog) == ["000001", "000001.json", "000002", "000002.json"]
    assert not list(tmp_path.glob("**/tracking_backlog*"))  # nothing kept on this machine

    with tracking.start_run(cfg, is_chief=True, state_dir=state) as again:
        pass
    assert again.run_id == run.run_id
    assert mlflow.artifacts.load_text(f"runs:/{run.run_id}/logs/history.csv") == "epoch\n1\n"
    assert [p for p in _artifact_paths(run.run_id) if p.startswith("images/predictions~clip_0+step+1+")]
    assert storage.listdir(backlog) == []


# --------------------------------------------------------------------------- deleted in the tracking store
def _line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error")]
    return line


def test_training_whose_saved_run_was_deleted_is_one_line_before_any_work(tiny_overrides, tmp_path, capsys):
    from nfp.cli import main

    assert main(["train", *tiny_overrides, "train.epochs=1"]) == 0
    run_id = (tmp_path / "out" / tracking.RUN_ID_FILE).read_text()
    mlflow.MlflowClient().delete_run(run_id)
    csv_before = (tmp_path / "out/history.csv").read_bytes()
    capsys.readouterr()
    assert main(["train", *tiny_overrides, "train.epochs=2"]) == 2
    line = _line(capsys)
    assert line.startswith(f"error: MLflow run {run_id} (saved in {tmp_path}/out/mlflow_run_id by an earlier attempt)")
    assert f"deleted in the tracking store at sqlite:///{tmp_path}/mlflow.db" in line
    assert f"restore it with `mlflow runs restore --run-id {run_id}`" in line
    assert f"or delete {tmp_path}/out/mlflow_run_id to log into a new run" in line
    assert (tmp_path / "out/history.csv").read_bytes() == csv_before  # no epoch trained

    mlflow.MlflowClient().restore_run(run_id)  # the way on it names
    assert main(["train", *tiny_overrides, "train.epochs=2"]) == 0
    assert sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")) == [1, 2]


@pytest.mark.parametrize("chosen_by", ["tracking.experiment", "MLFLOW_EXPERIMENT_ID"])
def test_training_into_a_deleted_experiment_is_one_line_before_any_data_work(
    chosen_by, tiny_overrides, tmp_path, capsys, monkeypatch
):
    from nfp.cli import main

    experiment_id = mlflow.create_experiment("gone")
    mlflow.MlflowClient().delete_experiment(experiment_id)
    if chosen_by == "MLFLOW_EXPERIMENT_ID":
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    assert main(["train", *tiny_overrides, "tracking.experiment=gone"]) == 2
    line = _line(capsys)
    assert line.startswith(f"error: MLflow experiment 'gone' (id {experiment_id}, from {chosen_by}) is deleted")
    assert f"restore it with `mlflow experiments restore --experiment-id {experiment_id}`" in line
    assert f"or choose another in {chosen_by}" in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()  # errors before compute


def test_evaluate_into_a_deleted_run_or_experiment_is_one_line_before_the_evaluation(
    tiny_overrides, tiny_checkpoint, tmp_path, capsys
):
    from nfp.cli import main

    client = mlflow.MlflowClient()
    run_id = client.create_run(mlflow.create_experiment("evals")).info.run_id
    client.delete_run(run_id)
    out = tmp_path / "eval-out"
    capsys.readouterr()
    assert main(["evaluate", "--model", tiny_checkpoint, "--run-id", run_id, "--out", str(out), *tiny_overrides]) == 2
    line = _line(capsys)
    assert line.startswith(f"error: MLflow run {run_id} (--run-id) to log the evaluation into: deleted")
    assert "or pass --run-id of another" in line and not out.exists()

    client.delete_experiment(client.get_experiment_by_name("evals").experiment_id)
    assert (
        main(["evaluate", "--model", tiny_checkpoint, "--out", str(out), *tiny_overrides, "tracking.experiment=evals"])
        == 2
    )
    assert "MLflow experiment 'evals'" in _line(capsys) and not out.exists()


# --------------------------------------------------------------------------- what a run shows: params, data, system
def test_a_run_holds_the_compared_params_the_dataset_input_and_system_metrics(tiny_overrides, tmp_path, monkeypatch):
    from nfp.data.manifest import load_manifest
    from nfp.tracking.training_run import COMPARED_KEYS
    from nfp.training.train import train

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's own knobs: sample often here
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    overrides = [*tiny_overrides, "train.epochs=1", "tracking.log_model=false", "tracking.experiment=shown"]
    run_id = train(load_config(None, overrides))["run_id"]
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    # a short list people compare runs by, not every key (the whole config is config/resolved.yaml), the job's facts
    assert set(run.data.params) == set(COMPARED_KEYS) and len(COMPARED_KEYS) <= 5
    assert "config/resolved.yaml" in {a.path for a in client.list_artifacts(run_id, "config")}
    job_facts = {"replicas", "num_workers", "global_batch_size", "steps_per_epoch", "model_params"}
    assert job_facts | {"tensorflow_version", "keras_version", "mlflow_version", "data_manifest_id"} <= set(
        run.data.tags
    )

    manifest = load_manifest(f"{tmp_path}/data")
    (data,) = run.inputs.dataset_inputs
    assert (data.dataset.name, data.dataset.digest) == ("generate", manifest.id)
    (clips,) = json.loads(data.dataset.schema)["mlflow_colspec"]
    assert (clips["name"], clips["tensor-spec"]["shape"]) == ("clips", [-1, 6, 16, 16, 1])
    tags = {t.key: t.value for t in data.tags}
    assert (tags["mlflow.data.context"], tags["train_clips"], tags["val_clips"]) == ("training", "20", "2")
    found = mlflow.search_runs(
        [run.info.experiment_id], filter_string=f"dataset.digest = '{manifest.id}'", output_format="list"
    )
    assert [r.info.run_id for r in found] == [run_id]  # runs on the same data, found by it

    system = {m for m in run.data.metrics if m.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system

    # resumed with one more epoch: the same dataset input, not a second one; system metrics still off when asked
    train(load_config(None, [*overrides, "train.epochs=2"]))
    assert len(client.get_run(run_id).inputs.dataset_inputs) == 1
    quiet = train(
        load_config(None, [*overrides, f"train.output_dir={tmp_path}/quiet", "tracking.system_metrics=false"])
    )
    assert not [m for m in client.get_run(quiet["run_id"]).data.metrics if m.startswith("system/")]


def test_an_image_step_already_in_the_run_is_not_logged_again_on_resume(cfg, tmp_path):
    """A job interrupted after its step-0 strips (the untrained model) runs again from epoch 0: one image per step."""
    image = np.zeros((8, 8, 3), np.uint8)
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        run.log_image(image, "predictions/clip_0", step=0)
    first = {p for p in _artifact_paths(run.run_id, "images") if "+step+0+" in p}
    assert first
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as again:
        again.log_image(image + 1, "predictions/clip_0", step=0)  # the rerun's step 0
        again.log_image(image, "predictions/clip_0", step=1)
        again.log_image(image, "predictions/clip_0", step=1)  # and within one job too
    assert again.run_id == run.run_id
    paths = _artifact_paths(run.run_id, "images")
    assert {p for p in paths if "+step+0+" in p} == first
    assert len({p.split("+timestamp+")[0] for p in paths if "+step+1+" in p}) == 1
    assert len([p for p in paths if "+step+1+" in p]) == len(first)


def test_a_local_dataset_source_logs_without_mlflows_multiple_ways_warning(cfg, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
            run.log_dataset("video", "abc123", str(tmp_path / "videos"), [6, 16, 16, 3], {"train": 4})
    assert not [w for w in caught if "multiple ways" in str(w.message)]
    (dataset,) = mlflow.get_run(run.run_id).inputs.dataset_inputs
    assert dataset.dataset.digest == "abc123"
