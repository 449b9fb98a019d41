"""The logged model in MLflow's own clients: `mlflow models serve` / `predict` run from a virtualenv holding only the
model's own requirements, answer with `nfp predict`'s rollout, and refuse bad requests with HTTP 400 and one line."""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from conftest import free_port

from nfp.config import load_config

pytestmark = pytest.mark.slow

REGISTERED, ALIAS = "nfp-served", "champion"
VENV_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nfp-test"


def _tiny(root: Path) -> list[str]:
    """conftest's tiny_overrides, for a model trained once per module: 16×16 frames, 3 in, 3 out."""
    return [
        "data.source=generate", "data.image_size=16", "data.digit_size=8", "data.frames=6", "data.num_clips=24",
        "data.num_shards=2", f"data.dir={root}/data", "data.context_frames=3", "data.predict_frames=3",
        "model.preset=custom", "model.filters=[4]", "model.kernel_sizes=[3]", "train.epochs=1", "train.batch_size=4",
        "train.verbose=0", f"train.output_dir={root}/out", "train.images.num_clips=1", "evaluate.context_frames=3",
        "evaluate.predict_frames=3", "evaluate.batch_size=4", "tracking.experiment=served",
        f"tracking.register_as={REGISTERED}", f"tracking.alias={ALIAS}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model trained with tracking on, logged, registered and aliased, in a store of its own."""
    from nfp.training.train import train

    root = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(None)
        experiment = mlflow.create_experiment("served", artifact_location=str(root / "artifacts"))  # not ./mlruns
        cfg = load_config(None, _tiny(root))
        run_id = train(cfg)["run_id"]
        (logged,) = mlflow.search_logged_models(
            experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}'", output_format="list"
        )
        example = json.loads(mlflow.artifacts.load_text(f"{logged.artifact_location}/serving_input_example.json"))
        requirements = mlflow.artifacts.load_text(f"{logged.artifact_location}/requirements.txt")
    return SimpleNamespace(
        root=root, tracking_uri=uri, cfg=cfg, model_uri=f"models:/{logged.model_id}", example=example,
        requirements=requirements,
    )  # fmt: skip


@pytest.fixture
def store(trained, monkeypatch):
    """This test tracks into the trained model's store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.tracking_uri)
    return trained


@pytest.fixture(scope="module")
def serving_venv(trained) -> Path:
    """A virtualenv of the logged model's requirements.txt and nothing else, built once and cached across sessions
    under ~/.cache/nfp-test (keyed by the requirements); a venv that cannot be built fails the tests."""
    wanted = trained.requirements
    # pip byte-compiles what it installs: with PYTHONDONTWRITEBYTECODE set (as on CI), nothing else ever would, and
    # each serving process would compile TensorFlow and MLflow from source again (~7 CPU-s each)
    install = ["-m", "pip", "install", "-q", "-r", str(trained.root / "requirements.txt")]
    recipe = " ".join(install[:-1])  # how it is built is part of the cache key, as what it holds
    venv = VENV_ROOT / f"serving-venv-{hashlib.sha256((wanted + recipe).encode()).hexdigest()[:12]}"
    done = venv / "nfp-test-complete"
    if done.is_file():
        return venv
    import shutil

    shutil.rmtree(venv, ignore_errors=True)  # a build cut short
    venv.parent.mkdir(parents=True, exist_ok=True)
    (trained.root / "requirements.txt").write_text(wanted)
    started = time.monotonic()
    for cmd in ([sys.executable, "-m", "venv", str(venv)], [str(venv / "bin/python"), *install]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serving venv: {cmd[2]} ran past 900 s")
        if proc.returncode:
            pytest.fail(f"serving venv could not be built ({' '.join(cmd[-3:])}):\n{proc.stderr[-3000:]}")
    done.write_text(f"built in {time.monotonic() - started:.0f} s from:\n{wanted}\n")
    return venv


def _venv_env(venv: Path, tracking_uri: str) -> dict:
    """The environment a user of that venv has: its bin first on PATH (`mlflow models serve` runs uvicorn from it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PATH": f"{venv}/bin:{env['PATH']}", "VIRTUAL_ENV": str(venv), "MLFLOW_TRACKING_URI": tracking_uri}


@contextlib.contextmanager
def _serving(venv: Path, model_uri: str, root: Path, tracking_uri: str):
    """`mlflow models serve` of `model_uri` on 127.0.0.1, run from `venv` in `root` (outside the checkout) → its URL."""
    port = free_port()
    log = root / f"serve-{port}.log"
    proc = subprocess.Popen(
        [str(venv / "bin/mlflow"), "models", "serve", "-m", model_uri, "-h", "127.0.0.1",
         "-p", str(port), "--env-manager", "local"],
        env=_venv_env(venv, tracking_uri),
        cwd=root,  # not the checkout: nfp must come from the model's own code/
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(trained, serving_venv):
    """`mlflow models serve` of the logged model on 127.0.0.1, run from the serving venv outside the checkout."""
    with _serving(serving_venv, trained.model_uri, trained.root, trained.tracking_uri) as url:
        yield url


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _nfp_rollout(model_uri: str, context: np.ndarray, horizon: int) -> np.ndarray:
    """What `nfp predict` computes for these context frames (float 0–1, or uint8 read as /255)."""
    from nfp.inference.model_source import load_model
    from nfp.models.convlstm.model import rollout

    frames = context.astype(np.float32) / 255.0 if context.dtype == np.uint8 else context.astype(np.float32)
    return rollout(load_model(model_uri), frames, horizon)


def _clip(trained, seed: int = 7) -> np.ndarray:
    """(1, 3, 16, 16, 1) uint8: the first 3 frames of a generated clip, as `nfp predict --input generate:7` reads."""
    from nfp.inference.predict import load_input

    clip, _ = load_input(trained.cfg, f"generate:{seed}")
    return clip[None, :3]


def test_the_serving_venv_holds_the_models_requirements_and_no_nfp(serving_venv, trained):
    import keras
    import tensorflow as tf

    pinned = {"mlflow": mlflow.__version__, "keras": keras.__version__, "tensorflow": tf.__version__}
    assert set(trained.requirements.split()) == {f"{k}=={v}" for k, v in {**pinned, "numpy": np.__version__}.items()}
    found = subprocess.run(
        [str(serving_venv / "bin/python"), "-c", "import nfp"], cwd=trained.root, capture_output=True, text=True
    )
    assert found.returncode != 0 and "No module named 'nfp'" in found.stderr  # what serves it is the model's own


def test_the_serving_example_gets_the_rollout_of_the_default_horizon(server, store):
    status, body = _post(server, store.example)
    assert status == 200, body
    assert store.example["params"] == {"horizon": 3}  # evaluate.predict_frames
    context = np.asarray(store.example["inputs"], np.float32)
    predicted = np.asarray(body["predictions"], np.float32)
    assert context.shape == (1, 3, 16, 16, 1) and predicted.shape == (1, 3, 16, 16, 1)
    np.testing.assert_allclose(predicted, _nfp_rollout(store.model_uri, context, 3), atol=1e-5)


def test_a_horizon_request_of_uint8_frames_gets_nfp_predicts_frames(server, store, tmp_path):
    from nfp.inference.predict import run_predict

    context = _clip(store)
    status, body = _post(server, {"inputs": context.tolist(), "params": {"horizon": 5}})
    assert status == 200, body
    predicted = np.asarray(body["predictions"], np.float32)
    assert predicted.shape == (1, 5, 16, 16, 1) and 0 <= predicted.min() and predicted.max() <= 1
    np.testing.assert_allclose(predicted, _nfp_rollout(store.model_uri, context, 5), atol=1e-5)
    # and `nfp predict` itself, whose .npy holds the frames as uint8
    paths = run_predict(
        store.cfg, model_uri=store.model_uri, inputs="generate:7", context_frames=3, horizon=5,
        out_dir=str(tmp_path / "predict"), save_npy=True,
    )  # fmt: skip
    theirs = np.load(paths["npy"])[:, 0].astype(int)  # (5, H, W)
    ours = np.round(predicted[0, ..., 0] * 255).astype(int)
    assert np.abs(theirs - ours).max() <= 1  # the same frames, rounded to bytes


def test_mlflow_models_predict_gives_the_same_frames(serving_venv, store, tmp_path):
    context = _clip(store, seed=3)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": context.tolist(), "params": {"horizon": 4}}))
    proc = subprocess.run(
        [str(serving_venv / "bin/mlflow"), "models", "predict", "-m", store.model_uri, "-i", str(request),
         "-o", str(tmp_path / "out.json"), "-t", "json", "--env-manager", "local"],
        env=_venv_env(serving_venv, store.tracking_uri), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    predicted = np.asarray(out["predictions"] if isinstance(out, dict) else out, np.float32)
    np.testing.assert_allclose(predicted, _nfp_rollout(store.model_uri, context, 4), atol=1e-5)


BLACK = np.zeros((1, 3, 16, 16, 1), int).tolist()  # a good context
BAD_REQUESTS = {
    "wrong frame size": ({"inputs": np.zeros((1, 3, 8, 8, 1), int).tolist()}, "context: frames are 8×8×1"),
    "k of 0": ({"inputs": [[]]}, "context: got shape (1, 0), expected (batch, k, 16, 16, 1)"),
    "wrong rank": ({"inputs": np.zeros((3, 16, 16, 1), int).tolist()}, "context: got shape (3, 16, 16, 1)"),
    "horizon 0": ({"inputs": BLACK, "params": {"horizon": 0}}, "horizon: got 0, expected an integer from 1"),
    "horizon < 0": ({"inputs": BLACK, "params": {"horizon": -2}}, "horizon: got -2, expected an integer from 1"),
    "floats above 1": ({"inputs": np.full((1, 3, 16, 16, 1), 2.5).tolist()}, "context: float values must be"),
    "integers above 255": ({"inputs": np.full((1, 3, 16, 16, 1), 300).tolist()}, "context: integer values 300..300"),
}


@pytest.mark.parametrize("body, expected", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_bad_request_gets_400_and_one_line(server, body, expected):
    status, answer = _post(server, body)
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in answer
    assert answer["message"].startswith(expected) and "\n" not in answer["message"], answer["message"]


def test_the_version_training_registers_loads_by_its_alias(store):
    from nfp.inference.model_source import resolve_model

    version = mlflow.MlflowClient().get_model_version_by_alias(REGISTERED, ALIAS)
    assert int(version.version) == 1 and version.source == store.model_uri
    context = _clip(store)
    served = mlflow.pyfunc.load_model(f"models:/{REGISTERED}@{ALIAS}")
    np.testing.assert_allclose(served.predict(context), _nfp_rollout(store.model_uri, context, 3), atol=1e-5)
    keras_model, run_id, _ = resolve_model(f"models:/{REGISTERED}@{ALIAS}")  # nfp's own loader: the keras flavor
    assert run_id == version.run_id and keras_model.input_shape == (None, None, 16, 16, 1)


def test_a_linear_head_whose_raw_frames_leave_0_1_is_served_clipped_to_them(serving_venv, store, tmp_path):
    """The signature says float32 in [0, 1]: a client that scales by 255 into uint8 must never wrap around."""
    from nfp.config import load_config
    from nfp.inference import serving
    from nfp.models import build_model, rollout

    cfg = load_config(None, [*_tiny(tmp_path), "model.output_activation=linear"])
    model = build_model(cfg.model, frame_shape=(16, 16, 1), context_frames=3, predict_frames=3, scheduled_sampling=0,
                        sampling_from=3)  # fmt: skip
    head_bias = [w for w in model.weights if w.path.endswith("bias")][-1]
    head_bias.assign(np.full(head_bias.shape, 2.0, np.float32))  # every raw frame far above 1
    context = _clip(store).astype(np.float32) / 255.0
    assert rollout(model, context, 4).min() > 1.0
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("served").experiment_id):
        info = serving.log_model(model, context, horizon=4)
    with _serving(serving_venv, info.model_uri, tmp_path, store.tracking_uri) as url:
        status, body = _post(url, {"inputs": context.tolist(), "params": {"horizon": 4}})
    assert status == 200, body
    predicted = np.asarray(body["predictions"], np.float32)
    assert predicted.shape == (1, 4, 16, 16, 1)
    np.testing.assert_array_equal(predicted, 1.0)  # clipped, not 2.x


def test_a_ragged_list_to_pyfunc_predict_is_one_line(store):
    """In-process clients (mlflow.pyfunc.load_model(...).predict) get nfp's one line, not numpy's."""
    from nfp.inference.serving import BadRequest

    served = mlflow.pyfunc.load_model(store.model_uri)
    ragged = [[[[0]] * 16] * 16, [[[0]] * 16] * 15]  # two frames of 16 and 15 rows
    with pytest.raises(
        BadRequest, match=r"^context: a ragged list \(rows of different lengths\), expected \(batch, k, "
    ):
        served.predict([ragged])


def test_requests_of_ever_new_shapes_log_no_retracing_warning(store, caplog):
    """Each new (batch, k, horizon) of a request traces the rollout once, as it must: TensorFlow's warning that
    calls "triggered tf.function retracing" is noise in a server's log."""
    import logging

    served = mlflow.pyfunc.load_model(store.model_uri)
    with caplog.at_level(logging.WARNING):
        for n in range(1, 9):
            frames = np.zeros((n % 3 + 1, n % 2 + 1, 16, 16, 1), np.uint8)
            assert served.predict(frames, params={"horizon": n}).shape == (n % 3 + 1, n, 16, 16, 1)
    assert not [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
