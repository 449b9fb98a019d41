"""Reliability (issue 8): bad data, kills during prepare and training, tracking faults, NaN, credentials.

Each test names the guarantee it proves; docs_fault_tolerance.md points here. Kill points are found
by watching what the process writes (temporary shards, Keras progress output, the backup, PNGs),
never by hooks in production code.
"""

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import warm
from conftest import MlflowServer, Trainer, free_port

from nfp import tracking
from nfp.cli import main
from nfp.config import load_config
from nfp.data import pipeline
from nfp.data import prepare as prep
from nfp.data.manifest import load_manifest
from nfp.errors import TrackingError
from nfp.inference.model_source import load_model
from nfp.rundir import RunDir


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _only_run():
    client = mlflow.MlflowClient()
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    return runs[0]


def _csv_epochs(path) -> list[str]:
    if not path.exists():
        return []
    with path.open() as f:
        return [row["epoch"] for row in csv.DictReader(f)]


# --------------------------------------------------------------------------- bad data
@pytest.fixture
def prepared(tiny_overrides):
    cfg = load_config(None, tiny_overrides)
    prep.prepare(cfg.data, progress=False)
    return cfg


def test_an_extra_unlisted_shard_is_ignored_with_a_warning_naming_it(prepared):
    data = Path(prepared.data.dir)
    expected = pipeline.read_clips(prepared.data, load_manifest(prepared.data.dir), "train", 100)
    shutil.copy(
        data / "train-00000-of-00002.tfrecord", data / "train-00002-of-00003.tfrecord"
    )  # e.g. left by another layout
    with pytest.warns(
        UserWarning,
        match=r"data[/\\]?: ignoring 1 shard file\(s\) not listed in manifest.json: train-00002-of-00003.tfrecord",
    ):
        clips = pipeline.read_clips(prepared.data, load_manifest(prepared.data.dir), "train", 100)
    assert (clips == expected).all() and len(clips) == 20  # only the listed shards are read


def test_a_missing_listed_shard_stops_nfp_train_with_one_line_naming_it(prepared, tiny_overrides, tmp_path, capsys):
    os.remove(Path(prepared.data.dir) / "train-00001-of-00002.tfrecord")
    assert main(["train", *tiny_overrides]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith(("error", "Traceback"))]
    assert line.startswith("error: shard ") and line.endswith(
        "train-00001-of-00002.tfrecord: missing; run `nfp prepare` again"
    )
    assert not (tmp_path / "out").exists()
    client = mlflow.MlflowClient()
    assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []


# --------------------------------------------------------------------------- faults during prepare
@pytest.fixture(scope="module")
def many_frames(tmp_path_factory) -> Path:
    """Twelve videos of 240 frames of 120×160: a few seconds of decoding for two processes."""
    from media import moving_shapes, write_video

    root = tmp_path_factory.mktemp("many_frames")
    for i in range(12):
        write_video(root / f"v{i:02d}.mp4", moving_shapes(240, 120, 160, seed=i))
    return root


def _prepare_with_a_pool(videos: Path, data: Path) -> tuple[subprocess.Popen, list]:
    """`nfp prepare` of `videos` with 2 decoding processes, in its own process group (as a terminal runs it), once
    its decoding processes are up → (the process, its decoders)."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "nfp", "prepare", "data.source=video", f"data.path={videos}", f"data.dir={data}",
         "data.frame_size=[64,64]", "data.frames=10", "data.prepare_processes=2", "evaluate.context_frames=5",
         "evaluate.predict_frames=5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"prepare ended before its decoders were seen: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no decoding processes after 120 s"
        decoders = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        if len(decoders) == 2:
            return proc, decoders
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_during_a_pooled_prepare_is_one_line_and_leaves_no_process(many_frames, tmp_path):
    import psutil

    proc, decoders = _prepare_with_a_pool(many_frames, tmp_path / "data")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    _, alive = psutil.wait_procs(decoders, timeout=10)
    assert not alive, [p.pid for p in alive]
    assert not (tmp_path / "data" / "manifest.json").exists()


@pytest.mark.slow
def test_a_pooled_prepare_killed_with_sigkill_takes_its_decoders_with_it(many_frames, tmp_path):
    import psutil

    proc, decoders = _prepare_with_a_pool(many_frames, tmp_path / "data")
    proc.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
    proc.wait()
    _, alive = psutil.wait_procs(decoders, timeout=5)  # each watches its parent twice a second
    assert not alive, f"decoders outlived their parent: {[p.pid for p in alive]}"


def test_prepare_killed_mid_write_leaves_no_partial_shard_and_a_rerun_completes_byte_identical(tmp_path):
    # Big enough (12 train shards of 100 clips at 64×64) that shards are written one after another for a second or two.
    overrides = [
        "data.image_size=64",
        "data.digit_size=28",
        "data.frames=10",
        "data.num_clips=1200",
        "data.num_shards=12",
        "evaluate.context_frames=5",
        "evaluate.predict_frames=5",
    ]
    reference = load_config(None, [*overrides, f"data.dir={tmp_path}/reference"]).data
    expected = prep.prepare(reference, progress=False).content
    data = tmp_path / "data"
    proc = warm.Process(["-m", "nfp", "prepare", *overrides, f"data.dir={data}"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:  # freeze it, look, and kill it only when some shards are done and the next one is half-written
        assert proc.poll() is None, f"prepare ended before it could be killed: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "prepare made no progress"
        proc.send_signal(signal.SIGSTOP)  # a rename between looking and killing would spoil the scene
        names = os.listdir(data) if data.exists() else []
        if sum(bool(prep.SHARD_NAME.match(n)) for n in names) >= 2 and any(".tmp-" in n for n in names):
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    names = os.listdir(data)
    final = [n for n in names if prep.SHARD_NAME.match(n)]
    assert "manifest.json" not in names  # written last: readers never see a half-prepared dir
    assert 2 <= len(final) < 16 and any(".tmp-" in n for n in names)
    for name in final:  # whatever has a final name is complete
        assert _sha(data / name) == _sha(tmp_path / "reference" / name), name

    manifest = prep.prepare(load_config(None, [*overrides, f"data.dir={data}"]).data, progress=False).content
    assert manifest == expected
    shards = sorted(n for n in os.listdir(data) if prep.SHARD_NAME.match(n))
    assert shards == sorted(n for n in os.listdir(tmp_path / "reference") if prep.SHARD_NAME.match(n))
    for name in shards:
        assert _sha(data / name) == _sha(tmp_path / "reference" / name), name
    # The killed run's temporary file is hidden and never read: the data reads back without a warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            len(
                pipeline.read_clips(
                    load_config(None, [*overrides, f"data.dir={data}"]).data, load_manifest(str(data)), "val", 500
                )
            )
            == 120
        )


# --------------------------------------------------------------------------- faults during training
EPOCHS = 4
STEPS = 60  # ~1 s per epoch here: wide windows between the files each epoch writes


def _train_overrides(tiny_overrides, *extra):
    return [
        *tiny_overrides,
        f"train.epochs={EPOCHS}",
        f"train.steps_per_epoch={STEPS}",
        "train.verbose=1",
        "train.images.every_n_epochs=0",
        "tracking.log_model=false",
        *extra,
    ]


def _backed_up(out) -> int:
    return RunDir(str(out)).resume_epoch()


def _rerun_finishes_from(overrides, out, done: int, rows_before: dict) -> None:
    """Re-running the command resumes after `done` epochs, trains the rest, and every record holds each epoch once."""
    again = Trainer(overrides)
    assert again.finish() == 0, again.stderr[-3000:]
    assert f"resuming after epoch {done} of {EPOCHS}" in again.stderr
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]  # each epoch once
    for row in rows[:done]:
        assert row == rows_before[row["epoch"]]  # completed epochs were not trained again
    assert _backed_up(out) == EPOCHS

    assert load_model(str(out / "checkpoints/last.keras")).count_params() > 0
    run = _only_run()
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    for key in ("loss", "val_loss", "learning_rate", "epoch_time"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(1, EPOCHS + 1)), (
            key
        )


def _rows_by_epoch(out) -> dict:
    with (out / "history.csv").open() as f:
        return {row["epoch"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes_from_the_last_completed_epoch(tiny_overrides, tmp_path):
    import re

    out, overrides = tmp_path / "out", _train_overrides(tiny_overrides)
    first = Trainer(overrides)

    def mid_epoch_3() -> bool:  # Keras's progress bar: "Epoch 3/4" then " 17/60 ━━━…"
        _, sep, tail = first.stdout.partition(f"Epoch 3/{EPOCHS}")
        return bool(sep) and any(5 <= int(n) <= 40 for n in re.findall(rf"(\d+)/{STEPS}\b", tail))

    first.wait_until(mid_epoch_3, "step 5 of epoch 3")
    first.kill()
    assert _backed_up(out) == 2 and _csv_epochs(out / "history.csv") == ["1", "2"]  # killed inside epoch 3
    _rerun_finishes_from(overrides, out, 2, _rows_by_epoch(out))


@pytest.mark.slow
def test_sigkill_right_after_a_checkpoint_then_rerun_resumes_after_it(tiny_overrides, tmp_path):
    out, overrides = tmp_path / "out", _train_overrides(tiny_overrides)
    first = Trainer(overrides)
    first.wait_until(lambda: _backed_up(out) == 2, "backup of epoch 2")  # the backup is the last thing an epoch writes
    first.kill()
    assert _backed_up(out) == 2 and _csv_epochs(out / "history.csv") == ["1", "2"]
    _rerun_finishes_from(overrides, out, 2, _rows_by_epoch(out))


@pytest.mark.slow
def test_sigkill_during_image_logging_and_evaluation_then_rerun_redoes_that_epoch(tiny_overrides, tmp_path):
    out = tmp_path / "out"
    overrides = _train_overrides(tiny_overrides, "train.images.every_n_epochs=2", "evaluate.every_n_epochs=2")
    first = Trainer(overrides)
    # Epoch 2's strip is written, then logged to MLflow, then the CSV row, the validation evaluation, the metrics, the backup.
    first.wait_until(lambda: (out / "images/epoch_002.png").exists(), "epoch 2's prediction image")
    first.kill()
    assert _backed_up(out) == 1  # epoch 2 did not count as done
    _rerun_finishes_from(overrides, out, 1, _rows_by_epoch(out))
    # step 0 (the untrained model, fresh run only), then every 2nd epoch, epoch 2 rewritten by the rerun
    assert sorted(p.name for p in (out / "images").iterdir()) == ["epoch_000.png", "epoch_002.png", "epoch_004.png"]
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(_only_run().info.run_id, "val_mse")]
    assert sorted(steps) == [2, 4]


def test_resuming_into_an_evaluation_epoch_keeps_the_csv_columns_of_the_file(tiny_overrides, tmp_path):
    from nfp.training.train import train

    every_2 = [*tiny_overrides, "train.steps_per_epoch=3", "evaluate.every_n_epochs=2", "tracking.enabled=false"]
    train(load_config(None, [*every_2, "train.epochs=1"]))
    summary = train(
        load_config(None, [*every_2, "train.epochs=3"])
    )  # the first resumed epoch adds val_mse, val_ssim, …
    lines = (tmp_path / "out/history.csv").read_text().splitlines()
    assert [len(line.split(",")) for line in lines] == [len(lines[0].split(","))] * 4  # header + 3 rows, same columns
    assert len(summary["history"]["loss"]) == 2 and "val_mse" in summary["history"]


# --------------------------------------------------------------------------- tracking faults
def test_train_against_a_dead_tracking_server_fails_in_seconds_and_writes_nothing(
    tiny_overrides, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    assert main(["train", *tiny_overrides]) == 2
    assert time.monotonic() - start < 30
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line.startswith("error: MLflow tracking server at http://127.0.0.1:") and "is not usable" in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def _backlog_records(state_dir) -> list[dict]:
    """The tracking backlog's complete records, oldest first."""
    return [json.loads(p.read_text()) for p in sorted((state_dir / tracking.BACKLOG_DIR).glob("*.json"))]


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_tracking_server_dying_mid_training_costs_a_warning_and_the_backlog_is_replayed_on_rerun(
    tiny_overrides, tmp_path, monkeypatch
):
    (tmp_path / "srv").mkdir()
    server = MlflowServer(tmp_path / "srv").start()
    # Fail fast once the server is gone (MLflow's default retries would hold training up ~2 minutes, once).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = tmp_path / "out"
    overrides = _train_overrides(tiny_overrides, "train.images.every_n_epochs=1", "tracking.log_model=true")
    try:
        first = Trainer(overrides)
        first.wait_until(lambda: _backed_up(out) >= 1, "backup of epoch 1")
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server dies, it does not shut down politely
        server.proc.wait()
        assert first.finish() == 0, first.stderr[-3000:]
        assert first.stderr.count("MLflow logging failed") == 1 and "training continues" in first.stderr
        assert _csv_epochs(out / "history.csv") == [str(e) for e in range(1, EPOCHS + 1)] and _backed_up(out) == EPOCHS
        assert (out / "checkpoints/last.keras").is_file() and (out / "checkpoints/best.keras").is_file()
        backlog = _backlog_records(out)
        unlogged = {r["step"] for r in backlog if r["kind"] == "metrics"}
        assert EPOCHS in unlogged and {"image", "artifact", "model"} <= {r["kind"] for r in backlog}

        server = MlflowServer(tmp_path / "srv", port=server.port).start()
        run_id = (out / tracking.RUN_ID_FILE).read_text()
        client = mlflow.MlflowClient(server.uri)
        assert {m.step for m in client.get_metric_history(run_id, "loss")}.isdisjoint(unlogged)
        again = Trainer(overrides)
        assert again.finish() == 0, again.stderr[-3000:]
        assert f"all {EPOCHS} epochs already done" in again.stderr and "MLflow logging failed" not in again.stderr
        assert not (out / tracking.BACKLOG_DIR).exists()
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(1, EPOCHS + 1))
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(client.search_runs([run.info.experiment_id])) == 1

        # Everything the run would hold without the outage: each epoch's images, the plot, the GIF, the model.
        artifacts = _artifact_paths(client, run_id)
        for clip in (0, 1):  # MLflow files key "predictions/clip_0" as images/predictions~clip_0+step+N+…
            series = [
                p for p in artifacts if p.startswith(f"images/predictions~clip_{clip}+step+") and p.endswith(".png")
            ]
            assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in series) == list(range(EPOCHS + 1)), clip
        for expected in ("config/resolved.yaml", "logs/history.csv", "plots/history.png", "checkpoints/last.keras"):
            assert expected in artifacts, f"{expected} not in {sorted(artifacts)}"
        assert [p for p in artifacts if p.startswith("predictions/") and p.endswith(".gif")], sorted(artifacts)
        (logged,) = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        import numpy as np

        context = np.random.rand(1, 3, 16, 16, 1).astype(np.float32)  # served: the rollout, evaluate.predict_frames
        assert np.asarray(mlflow.pyfunc.load_model(logged.model_uri).predict(context)).shape == (1, 3, 16, 16, 1)
    finally:
        server.stop()


# --------------------------------------------------------------------------- numerics
def test_nan_loss_exits_2_with_one_line_and_keeps_the_last_good_checkpoint(tiny_overrides, tmp_path, capsys):
    import numpy as np

    from nfp.training.train import train

    sgd = [
        *tiny_overrides,
        "model.output_activation=linear",
        "train.optimizer=sgd",
        "train.loss=mse",
        "train.steps_per_epoch=6",
    ]
    train(load_config(None, [*sgd, "train.epochs=1", "train.learning_rate=0.01"]))  # one good epoch
    out = tmp_path / "out"
    good = {name: _sha(out / "checkpoints" / name) for name in ("last.keras", "best.keras")}

    # Resumed with a learning rate that blows up: epoch 2 diverges.
    assert main(["train", *sgd, "train.epochs=2", "train.learning_rate=1.0e+30"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith(("error", "Traceback"))]
    assert line == (
        f"error: loss became NaN/Inf in epoch 2: stopped; last good state kept in {out}/backup, "
        f"{out}/checkpoints/best.keras, {out}/checkpoints/last.keras (try a lower train.learning_rate)"
    )
    assert {name: _sha(out / "checkpoints" / name) for name in good} == good
    model = load_model(str(out / "checkpoints/last.keras"))
    assert np.isfinite(model.predict(np.zeros((1, 5, 16, 16, 1), np.float32), verbose=0)).all()
    assert _backed_up(out) == 1 and _csv_epochs(out / "history.csv") == ["1"]
    run = _only_run()
    assert run.info.status == "FAILED" and "loss became NaN/Inf in epoch 2" in run.data.tags["error"]


# --------------------------------------------------------------------------- security
# Allowed download schemes: tests/test_data_download.py::test_schemes_outside_allowed_schemes_are_refused.
# Path traversal in a manifest: tests/test_data_prepare.py::test_manifest_with_a_path_traversing_shard_name_is_refused.
SECRET_URL = "https://alice:s3cret@data.example.com/mnist_test_seq.npy"


def test_params_of_a_config_with_credentials_in_data_url_are_redacted(tmp_path):
    cfg = load_config(None, [f"data.url={SECRET_URL}", "tracking.experiment=sec"])
    with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
        run.log_params(cfg.flat())
    params = _only_run().data.params
    assert params["data.url"] == "https://***@data.example.com/mnist_test_seq.npy"
    assert not any("s3cret" in v or "alice" in v for v in params.values())


def test_tags_and_the_error_tag_never_carry_credentials(tmp_path):
    cfg = load_config(None, ["tracking.experiment=sec"])
    with pytest.raises(RuntimeError):
        with tracking.start_run(cfg, is_chief=True, state_dir=tmp_path) as run:
            run.set_tags({"source": SECRET_URL})
            raise RuntimeError(f"cannot read {SECRET_URL}")
    tags = _only_run().data.tags
    assert tags["source"] == "https://***@data.example.com/mnist_test_seq.npy"
    assert tags["error"] == "RuntimeError: cannot read https://***@data.example.com/mnist_test_seq.npy"


def test_an_unreachable_tracking_uri_with_credentials_is_reported_redacted(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{free_port()}")
    with pytest.raises(TrackingError) as info:
        tracking.check_reachable()
    message = str(info.value)
    assert "http://***@127.0.0.1:" in message and "s3cret" not in message and "alice" not in message


def test_a_failing_download_with_credentials_in_data_url_never_prints_them(tmp_path, capsys):
    url = f"http://alice:s3cret@127.0.0.1:{free_port()}/mnist_test_seq.npy"
    assert (
        main(
            [
                "prepare",
                "data.source=download",
                f"data.url={url}",
                f"data.dir={tmp_path}/data",
                f"data.cache_dir={tmp_path}/cache",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"error: data.url: cannot download http://***@127.0.0.1:{url.split(':')[3]}" in err
    assert "s3cret" not in err and "alice" not in err


# --------------------------------------------------------------------------- a full disk
def test_a_full_disk_while_preparing_is_one_line_and_leaves_no_partial_shard(
    tiny_overrides, tmp_path, monkeypatch, capsys
):
    import tensorflow as tf

    written = []

    class FullDisk:  # a TFRecordWriter whose disk fills up after two records
        def __init__(self, path, options=None):
            self.path = path
            Path(path).write_bytes(b"partial")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, record):
            written.append(record)
            if len(written) > 2:
                raise tf.errors.ResourceExhaustedError(None, None, f"{self.path}; No space left on device")

    monkeypatch.setattr(tf.io, "TFRecordWriter", FullDisk)
    assert main(["prepare", *tiny_overrides]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith(("error", "Traceback"))]
    assert line.startswith("error: data.dir: cannot write shard ") and "No space left on device" in line
    left = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert not [n for n in left if ".tmp-" in n or n.endswith(".tfrecord") or n == "manifest.json"], left


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_checkpoint(
    tiny_overrides, tmp_path, monkeypatch
):
    import errno

    import keras

    from nfp.errors import TrainingError
    from nfp.training.train import train

    real_save, saves = keras.Model.save, []

    def save(self, filepath, *args, **kwargs):
        saves.append(str(filepath))
        if len(saves) > 2:  # epoch 1's best and last fit; epoch 2's best does not
            Path(filepath).write_bytes(b"half a zip")
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)
    cfg = load_config(
        None, [*tiny_overrides, "train.epochs=3", "tracking.enabled=false", "train.images.every_n_epochs=0"]
    )
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=(
        rf"^writing under {out} failed in epoch 2 \(No space left on device\): stopped; last good state kept in "
        rf"{out}/backup, {out}/checkpoints/best.keras, {out}/checkpoints/last.keras$"
    )):  # fmt: skip
        train(cfg)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.keras", "last.keras"]  # no *.tmp.keras
    assert RunDir(str(out)).resume_epoch() == 1
