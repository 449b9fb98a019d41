"""Shared test setup: quiet TF, an isolated MLflow store per test, tiny-shape config overrides."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # else each gcsfs call waits 60 s on gRPC
# MLflow 3 sends usage data (from threads, to its servers on the internet) unless told not to; it tells itself only
# while PYTEST_CURRENT_TEST is set, and the tests import it before that, at collection
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# XLA's CPU backend compiling for speed of compiling: LLVM's optimisation off, and its older emitters for fusions (the
# newer MLIR ones take longer to build). The tests' compiled programs run a few steps of tiny shapes, so compiling is
# most of their cost: a GPU-path training 35 → 15 CPU-s. What XLA compiles, and a GPU's backend, are untouched. (XLA
# stops at an unknown flag, naming it: a TensorFlow that drops one says so at the first compile.)
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + [f for f in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
       if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]  # a flag set by hand stays as set
).strip()  # fmt: skip
# TensorFlow's persistent XLA cache, one per run of the suite (made here in pytest's first process, which its xdist
# workers inherit): a program compiled again (a killed training's rerun, evaluate's rollout after training's, the same
# tiny model in another test) is read back, not compiled. Keyed by the program and its shapes; each run starts it empty,
# as CI does. The GPU-path and rerunning files side by side: 535 → 508 CPU-s.
os.environ["TF_XLA_FLAGS"] = os.environ.get("TF_XLA_FLAGS", "") + (
    "" if "--tf_xla_persistent_cache_directory" in os.environ.get("TF_XLA_FLAGS", "")
    else f" --tf_xla_persistent_cache_directory={tempfile.gettempdir()}/nfp-tests-xla-{os.getpid()}"
)  # fmt: skip

import atexit
import contextlib
import csv
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import warm


def pytest_configure(config):
    """A suite started in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored, and so
    would every process it starts (an ignored signal stays ignored across exec): the Ctrl-C tests' commands could not
    be interrupted. Python's own handler again, which a new process resets to the default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        atexit.register(_end_without_teardown)  # the first registered, the last run


def pytest_unconfigure(config):
    """The run's XLA cache goes with the run (its controller ends last)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        import shutil

        shutil.rmtree(f"{tempfile.gettempdir()}/nfp-tests-xla-{os.getpid()}", ignore_errors=True)


def _end_without_teardown():
    """An xdist worker, its results sent and atexit's other work done, ends without Python's teardown of every module
    and object: after hundreds of in-process trainings (TensorFlow graphs, Keras models) it took seconds at the end of
    the run, every test waiting on it. Handlers registered before this one (at import of what pytest itself imports:
    logging's shutdown) do not run; what the tests' code registers (the warm server's stop, MLflow's) runs first."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


# --------------------------------------------------------------------------- scheduling over xdist workers
# Files whose tests run a minute or more each (end-to-end runs of the GPU path, sweeps, bench): scheduled first, so
# that under `--dist loadgroup --no-loadscope-reorder` (xdist's reorder would put the groups of most tests first)
# the two workers finish together rather than one waiting on the last long test.
LONGEST_FIRST = ["test_gpu_path_nodes", "test_sweep", "test_gpu_path", "test_bench", "test_families", "test_serving"]


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Each test is scheduled on its own (`make test`: --dist loadgroup), except those sharing a module-scoped
    fixture (a venv, a server, prepared data), kept with their file on one worker so that it is built once; the slow
    first, the longest files first among them."""
    for item in items:
        shared = any(d.scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs)
        if shared and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    group = {id(i): (m.args[0] if (m := i.get_closest_marker("xdist_group")) else i.nodeid) for i in items}
    slow, first = {}, {}
    for index, item in enumerate(items):
        first.setdefault(group[id(item)], index)
        slow[group[id(item)]] = slow.get(group[id(item)], False) or item.get_closest_marker("slow") is not None
    rank = {stem: r for r, stem in enumerate(LONGEST_FIRST)}

    def order(pair):
        index, item = pair
        g = group[id(item)]
        return (not slow[g], rank.get(item.path.stem, len(rank)), first[g], index)

    items[:] = [item for _, item in sorted(enumerate(items), key=order)]


def pytest_xdist_node_collection_finished(node, ids):
    """Under `--dist loadgroup`, xdist marks each grouped test's id with "@group"; a pytest whose node ids it cannot
    mark (9.2: pytest-xdist#1386) would have the groups scheduled apart, their module fixtures built on each worker:
    refused, checked on the bench tests, which are always grouped."""
    bench = [i for i in ids if "test_bench.py::test_quick_run" in i]
    if node.config.getoption("dist") == "loadgroup" and bench and not any("@bench-" in i for i in bench):
        raise pytest.UsageError(f"pytest-xdist ignores xdist_group (pytest-xdist#1386): {bench[0]} has no @group")


_EMPTY_STORE: list[Path] = []  # the session's empty MLflow sqlite store, its tables made (empty_mlflow_store)


@pytest.fixture(scope="session", autouse=True)
def _empty_mlflow_store_once(tmp_path_factory):
    """MLflow makes a new sqlite store's tables by running its ~60 migrations, about 2 s a store: they run once per
    test process here, and each test's store (and each test server's) starts as a copy of that empty store."""
    import mlflow

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    _EMPTY_STORE.append(path)
    yield
    _EMPTY_STORE.clear()


def empty_mlflow_store(path) -> Path:
    """`path` made an empty MLflow sqlite store (its tables and the Default experiment, as MLflow makes them)."""
    import shutil

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(_EMPTY_STORE[0], path))


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path, monkeypatch, request):
    """Each test tracks into its own sqlite store, never ./mlflow.db, with no run or URI left from another test.
    The store exists already (a copy of the empty one) unless the test is marked no_mlflow_store."""
    import mlflow

    mlflow.set_tracking_uri(None)  # a process-wide URI set by one test would override the env var in the next
    if request.node.get_closest_marker("no_mlflow_store") is None:
        empty_mlflow_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "TF_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path / "mlflow.db"
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """Overrides that shrink any config to seconds on a CPU: 16×16 frames, 6 per clip, 4 filters."""
    return [
        "data.source=generate",
        "data.image_size=16",
        "data.digit_size=8",
        "data.frames=6",
        "data.num_clips=24",
        "data.num_shards=2",
        f"data.dir={tmp_path}/data",
        "data.context_frames=3",
        "data.predict_frames=3",
        "model.preset=custom",
        "model.filters=[4]",
        "model.kernel_sizes=[3]",
        "train.epochs=2",
        "train.batch_size=4",
        "train.verbose=0",
        f"train.output_dir={tmp_path}/out",
        "train.images.num_clips=2",
        "evaluate.context_frames=3",
        "evaluate.predict_frames=3",
        "evaluate.batch_size=4",
    ]


def flip_a_payload_byte(shard) -> None:
    """Flip one byte mid-shard, inside a record's payload: size unchanged, only a hash or TF's CRC check sees it."""
    from pathlib import Path

    data = bytearray(Path(shard).read_bytes())
    data[len(data) // 2] ^= 1
    Path(shard).write_bytes(bytes(data))


@pytest.fixture
def flip_a_byte():
    return flip_a_payload_byte


@pytest.fixture
def corrupt_after_building(monkeypatch):
    """patch(builder, shard_for): nfp.data.pipeline.<builder> flips a byte of shard_for(data_cfg, split) (None: none)
    right after building, past its up-front sha256 check, as a direct gs:// read or a mid-run change meets it."""
    from nfp.data import pipeline

    def patch(builder: str, shard_for) -> None:
        real = getattr(pipeline, builder)

        def build(data_cfg, manifest, split, *args, **kwargs):
            ds = real(data_cfg, manifest, split, *args, **kwargs)
            if (shard := shard_for(data_cfg, split)) is not None:
                flip_a_payload_byte(shard)
            return ds

        monkeypatch.setattr(pipeline, builder, build)

    return patch


@pytest.fixture
def tiny_checkpoint(tiny_overrides, tmp_path) -> str:
    """Path of a .keras model fit for a few steps on the tiny config's prepared data (prepared here)."""
    from nfp.config import load_config
    from nfp.data.pipeline import make_dataset
    from nfp.data.prepare import prepare
    from nfp.models.convlstm.model import build_model

    cfg = load_config(None, tiny_overrides)
    manifest = prepare(cfg.data, progress=False)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    model.compile("adam", "binary_crossentropy")
    model.optimizer.build(model.trainable_variables)  # as nfp train does: the step traced once, not twice
    model.fit(make_dataset(cfg.data, manifest, "train", 4, training=True), steps_per_epoch=3, epochs=1, verbose=0)
    path = tmp_path / "tiny.keras"
    model.save(path)
    return str(path)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (all held until every one is found)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, local artifact destination)."""

    def __init__(self, root, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 60.0) -> "MlflowServer":
        import time
        import urllib.request

        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        if not Path(f"{self.root}/server.db").exists():  # a restarted server keeps its store
            empty_mlflow_store(Path(self.root) / "server.db")
        # `mlflow server` and the uvicorn it starts, forks of the warm Python (~1 CPU-s to healthy, cold ~5), in a
        # session of their own: stop() and a test that kills the server reach both with killpg
        with open(f"{self.root}/server.log", "ab") as log:
            self.proc = warm.Process(
                ["-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{self.root}/server.db",
                 "--artifacts-destination", f"{self.root}/artifacts", "--workers", "1"],
                env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: see {self.root}/server.log")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {timeout}s")

    def stop(self) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real tracking server for the session; tests point MLFLOW_TRACKING_URI at `.uri`."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    yield server
    server.stop()


# What the tests' own mlflow.keras.log_model says a model needs: said, else MLflow infers it by loading the model in a
# new Python (~5 CPU-s a model); nothing here installs them
REQUIREMENTS = ["tensorflow", "keras"]


def tiny_model(size: int = 16):
    """A causal ConvLSTM (the head's temporal kernel is 1), 4 filters."""
    import keras

    return keras.Sequential(
        [
            keras.Input((None, size, size, 1)),
            keras.layers.ConvLSTM2D(4, 3, padding="same", return_sequences=True),
            keras.layers.Conv3D(1, (1, 3, 3), padding="same", activation="sigmoid"),
        ]
    )


# --------------------------------------------------------------------------- gs:// on 127.0.0.1
BUCKET = "nfp-test"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """One gcp-storage-emulator on 127.0.0.1 for the module, keeping GCS's generation preconditions
    (tests/gcs_emulator.py), with STORAGE_EMULATOR_HOST pointing at it."""
    import time
    import urllib.request

    port = free_port()
    root = tmp_path_factory.mktemp("gcs")
    wrapper = os.path.join(os.path.dirname(__file__), "gcs_emulator.py")
    proc = subprocess.Popen(
        [sys.executable, wrapper, "-d", str(root), "start", "--host", "127.0.0.1", "--port", str(port),
         "--default-bucket", BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    host = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"{host}/storage/v1/b/{BUCKET}", timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("gcp-storage-emulator did not start")
            time.sleep(0.2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", host)
        yield host
    proc.terminate()
    proc.wait(timeout=10)


# --------------------------------------------------------------------------- a training process to kill
class Trainer:
    """`nfp train` in a subprocess; its stdout (Keras progress bars, verbose=1) is collected as it comes."""

    def __init__(self, overrides, env=None):
        self.proc = warm.Process(
            ["-m", "nfp", "train", *overrides], env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, text=False
        )
        self.stdout, self._err = "", []
        threading.Thread(target=self._pump, args=(self.proc.stdout, None), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True).start()

    def _pump(self, stream, sink):
        while chunk := stream.read1(4096):
            if sink is None:
                self.stdout += chunk.decode(errors="replace")
            else:
                sink.append(chunk)

    @property
    def stderr(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    def wait_until(self, condition, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"training ended before {what}: {self.stderr[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout}s"
            time.sleep(0.005)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout: float = 300) -> int:
        self.proc.wait(timeout=timeout)
        time.sleep(0.1)  # let the pump threads drain the pipes
        return self.proc.returncode

    def send_signal(self, signum) -> None:
        self.proc.send_signal(signum)

    def rows(self, path) -> list[dict]:
        """The CSV rows at `path` so far (the job's history.csv)."""
        if not Path(path).exists():
            return []
        with Path(path).open() as f:
            return list(csv.DictReader(f))

    def wait_for_rows(self, path, n: int, timeout: float = 180) -> None:
        """Until the CSV at `path` holds `n` epochs' rows."""
        self.wait_until(lambda: len(self.rows(path)) >= n, f"epoch {n}'s row in {path}", timeout)
