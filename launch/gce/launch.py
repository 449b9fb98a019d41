"""Train nfp on N Compute Engine GPU VMs (Deep Learning VM image), or delete them; stdlib + nfp only.

    python launch/gce/launch.py create --project P --zone Z --bucket gs://B --tracking-uri URI \
        [--num-vms 3] [--spot] [--dry-run] [key.path=value ...]
    python launch/gce/launch.py create ... --sweep [--num-vms 4] [key.path=value ...]   # nfp sweep on every VM
    python launch/gce/launch.py start|delete --project P --zone Z [--num-vms 3] [--dry-run]

VMs are named NAME-0 … NAME-(N-1), so every VM's internal hostname is known before any exists and
each startup script carries its own TF_CONFIG (worker 0 is the chief). The project goes to the VMs
as `git archive HEAD` uploaded to the bucket. --dry-run prints the exact commands and startup
scripts instead of running them. Every argument and override is checked first (overrides by nfp's
own config loader, names by GCE's rules), so nothing fails later on a booted GPU VM.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # works from a checkout without `pip install` (needs only nfp's pyyaml)

from nfp.distribute import tf_config  # noqa: E402
from nfp.errors import ConfigError, NfpError  # noqa: E402

# These families have their GPUs built in: `--accelerator` is only for N1 machines.
_BUILT_IN_GPUS = ("a2-", "a3-", "a4-", "a4x-", "g2-", "g4-")
# GCE's naming rules: instance names RFC 1035 (≤ 63), project ids, zones REGION-LETTER (AI zones: us-central1-ai1a).
_VM_NAME_MAX = 63
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_PROJECT = re.compile(r"[a-z][-a-z0-9]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_ZONE = re.compile(rf"{_REGION.pattern}-([a-z]|ai[0-9]+[a-z])")


@dataclass
class Plan:
    """What a command does: files to write (startup scripts) and gcloud/git commands to run, in order."""

    files: dict[Path, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)


def vm_names(name: str, num_vms: int) -> list[str]:
    """Deterministic instance names NAME-0 … NAME-(N-1)."""
    return [f"{name}-{i}" for i in range(num_vms)]


def hostnames(names: list[str], zone: str, project: str) -> list[str]:
    """Internal DNS names (zonal DNS) the VMs answer to inside their VPC network."""
    return [f"{n}.{zone}.c.{project}.internal" for n in names]


def plan_create(args: argparse.Namespace) -> Plan:
    """The commands and startup scripts that create args.num_vms training VMs."""
    _check_where(args)
    _check(args)
    plan = Plan()
    script_dir = Path(args.script_dir)
    source = args.source
    if source is None:
        commit = _git("rev-parse", "HEAD")
        source = f"{args.bucket.rstrip('/')}/nfp/src/{commit}.tar.gz"
        tarball = script_dir / "nfp-src.tar.gz"
        plan.commands.append(["git", "-C", str(REPO), "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"])
        plan.commands.append(["gcloud", "storage", "cp", str(tarball), source, f"--project={args.project}"])

    names = vm_names(args.name, args.num_vms)
    hosts = ",".join(f"{h}:{args.port}" for h in hostnames(names, args.zone, args.project))
    for index, name in enumerate(names):
        config = tf_config.from_hosts(hosts, index) if args.num_vms > 1 and not args.sweep else None
        script = script_dir / f"{name}.startup.sh"
        plan.files[script] = startup_script(
            args, name=name, index=index, source=source, tf_config_json=config and json.dumps(config)
        )
        plan.commands.append(_create_command(args, name, script))
    return plan


def plan_delete(args: argparse.Namespace) -> Plan:
    """The command that deletes the VMs NAME-0 … NAME-(N-1) (their boot disks go with them)."""
    _check_where(args)
    names = vm_names(args.name, args.num_vms)
    where = [f"--project={args.project}", f"--zone={args.zone}"]
    return Plan(commands=[["gcloud", "compute", "instances", "delete", *names, *where, "--quiet"]])


def plan_start(args: argparse.Namespace) -> Plan:
    """The command that starts stopped VMs again (after a spot preemption): each resumes from its backup."""
    _check_where(args)
    names = vm_names(args.name, args.num_vms)
    return Plan(
        commands=[
            ["gcloud", "compute", "instances", "start", *names, f"--project={args.project}", f"--zone={args.zone}"]
        ]
    )


def startup_script(args: argparse.Namespace, *, name: str, index: int, source: str, tf_config_json: str | None) -> str:
    """Bash run as root at every boot of VM `name`: install the project once, train, stop the VM."""
    config, overrides = nfp_config(args)
    train = shlex.join(["nfp", "train", "--config", config, *overrides])
    if args.sweep:  # a sweep worker per GPU of this VM; the study on the tracking server joins the VMs
        train = (f"NFP_SWEEP_WORKER={index} " + shlex.join(["nfp", "sweep", "--config", config, "--workers"])
                 + ' "$(nvidia-smi -L | grep -c \'^GPU \')" ' + shlex.join(overrides))  # fmt: skip
    # preflight of this VM's GPUs: a failure stops the script (and the VM) before training
    doctor = shlex.join(["nfp", "doctor", "--config", config, *overrides])
    lines = [
        "#!/bin/bash",
        f"# nfp startup script for {name} (VM {index + 1} of {args.num_vms}), written by launch/gce/launch.py.",
        "# It runs at every boot: a spot VM that was stopped and is started again resumes training",
        "# from the BackupAndRestore state under train.output_dir on gs:// and logs into the same MLflow run.",
        "set -euo pipefail",
        "exec > >(tee -a /var/log/nfp.log) 2>&1",
        "export HOME=/root",
        f"export MLFLOW_TRACKING_URI={shlex.quote(args.tracking_uri)}",
    ]
    if tf_config_json:
        lines.append(f"export TF_CONFIG={shlex.quote(tf_config_json)}")
    lines += [
        "workdir=/opt/nfp",
        'if [ -e "$workdir/DONE" ]; then echo "nfp: training already finished"; exit 0; fi',
    ]
    if args.stop_when_done:
        lines.append("trap 'shutdown -h now' EXIT  # stop GPU billing when training ends or fails (disk is kept)")
    lines += [
        'if [ ! -x "$workdir/.venv/bin/nfp" ]; then',
        '  mkdir -p "$workdir"',
        f"  gcloud storage cp {shlex.quote(source)} /tmp/nfp-src.tar.gz",
        '  tar -xzf /tmp/nfp-src.tar.gz -C "$workdir"',
        '  if ! python3 -m venv --clear "$workdir/.venv"; then',
        "    apt-get -y update && apt-get -y install python3-venv",
        '    python3 -m venv --clear "$workdir/.venv"',
        "  fi",
        '  "$workdir/.venv/bin/python" -m pip install --quiet --upgrade pip',
        '  "$workdir/.venv/bin/python" -m pip install --quiet -e "${workdir}[gpu]"',
        "fi",
        'cd "$workdir"',
        "# shellcheck disable=SC1091",
        "source .venv/bin/activate",
        doctor,
        train,
        'touch "$workdir/DONE"',
    ]
    return "\n".join(lines) + "\n"


def nfp_config(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The config path (inside the project) and overrides every VM's `nfp doctor` and `nfp train` get."""
    bucket = args.bucket.rstrip("/")
    if args.sweep:  # trials in BUCKET/runs/RUN_NAME/<study>/trial-NNN
        config = args.config or "configs/sweep.yaml"
        overrides = [
            f"data.dir={bucket}/data/moving_mnist",
            f"sweep.output_dir={bucket}/runs/{args.run_name or args.name}",
        ]
        return config, [*overrides, *args.overrides]
    config = args.config or ("configs/multi_node.yaml" if args.num_vms > 1 else "configs/multi_gpu.yaml")
    overrides = [f"data.dir={bucket}/data/moving_mnist", f"train.output_dir={bucket}/runs/{args.run_name or args.name}"]
    if args.num_vms > 1:
        overrides.append(f"data.num_workers={args.num_vms}")
    return config, [*overrides, *args.overrides]


def _create_command(args: argparse.Namespace, name: str, script: Path) -> list[str]:
    cmd = [
        "gcloud", "compute", "instances", "create", name,
        f"--project={args.project}",
        f"--zone={args.zone}",
        f"--machine-type={args.machine_type}",
    ]  # fmt: skip
    if args.accelerator_count and not args.machine_type.startswith(_BUILT_IN_GPUS):
        cmd.append(f"--accelerator=type={args.accelerator_type},count={args.accelerator_count}")
    cmd += [
        "--maintenance-policy=TERMINATE",  # GPU VMs cannot live-migrate
        f"--image-project={args.image_project}",
        f"--image-family={args.image_family}",
        f"--boot-disk-size={args.boot_disk_size}",
        "--scopes=cloud-platform",  # read/write gs:// with the VM's service account
        "--tags=nfp",  # for a firewall rule on custom networks: workers talk on --port
        f"--labels=nfp-job={args.name}",
        "--metadata=install-nvidia-driver=True",
        f"--metadata-from-file=startup-script={script}",
    ]
    if args.network:
        cmd.append(f"--network={args.network}")
    if args.service_account:
        cmd.append(f"--service-account={args.service_account}")
    if args.spot:
        cmd += ["--provisioning-model=SPOT", "--instance-termination-action=STOP"]
    if args.max_run_duration:
        cmd.append(f"--max-run-duration={args.max_run_duration}")
        if not args.spot:
            cmd.append("--instance-termination-action=STOP")
    return cmd


def _check(args: argparse.Namespace) -> None:
    if not args.bucket.startswith("gs://") or len(args.bucket) <= len("gs://"):
        raise ConfigError(
            f"--bucket: got {args.bucket!r}, expected gs://BUCKET[/prefix] (data and checkpoints every VM can reach)"
        )
    if not args.tracking_uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(
            f"--tracking-uri: got {args.tracking_uri!r}, expected a tracking server URL (http(s)://…), not a store on the VM's disk"
        )
    if args.source is not None and not args.source.startswith("gs://"):
        raise ConfigError(f"--source: got {args.source!r}, expected a gs:// URL of a project tarball")
    if args.config and not (REPO / args.config).is_file():
        raise ConfigError(f"--config: {args.config} not found in {REPO}, expected a config shipped with the project")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: got {args.port}, expected 1..65535")
    _check_overrides(*nfp_config(args))


def _check_overrides(config: str, overrides: list[str]) -> None:
    """Load the config the VMs will load, with nfp's own loader: a bad override fails here, not on a GPU VM."""
    try:
        from nfp.config import load_config
    except ImportError as err:  # pyyaml: run the launcher with the project's Python
        raise ConfigError(
            f"overrides: cannot check them ({err}), expected launch.py run by a Python with nfp's dependencies"
        ) from None
    load_config(REPO / config, overrides)


def _check_where(args: argparse.Namespace) -> None:
    """--project, --zone, --name and --num-vms by GCE's rules (every command uses them)."""
    if not _PROJECT.fullmatch(args.project):
        raise ConfigError(
            f"--project: got {args.project!r}, expected a project id: 6-30 lowercase letters, digits or '-', "
            "starting with a letter, not ending with '-'"
        )
    if _REGION.fullmatch(args.zone):
        raise ConfigError(f"--zone: got {args.zone!r}, a region, expected one of its zones, e.g. {args.zone}-a")
    if re.search(r"[\s,;]", args.zone):
        raise ConfigError(f"--zone: got {args.zone!r}, expected one zone like us-central1-a (one launch per zone)")
    if not _ZONE.fullmatch(args.zone):
        raise ConfigError(f"--zone: got {args.zone!r}, expected a zone REGION-LETTER like us-central1-a")
    if args.num_vms < 1:
        raise ConfigError(f"--num-vms: got {args.num_vms}, expected >= 1")
    longest = _VM_NAME_MAX - len(f"-{args.num_vms - 1}")
    if not _NAME.fullmatch(args.name) or len(args.name) > longest:
        with_vms = f" with --num-vms {args.num_vms}" if args.num_vms > 10 else ""
        raise ConfigError(
            f"--name: got {args.name!r}, expected lowercase letters, digits and '-', starting with a letter, "
            f"not ending with '-', at most {longest} characters{with_vms} (VM names NAME-i are at most {_VM_NAME_MAX})"
        )


def _git(*argv: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise ConfigError(f"--source: {REPO} is not a git checkout, expected --source gs://…/nfp-src.tar.gz") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/gce/launch.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--project", required=True, help="Google Cloud project id")
        sub.add_argument("--zone", required=True, help="zone with the GPUs, e.g. us-central1-a")
        sub.add_argument("--name", default="nfp", help="VM name prefix: VMs are NAME-0 … NAME-(N-1) (default: nfp)")
        sub.add_argument("--num-vms", type=int, default=1, help="VMs; > 1 trains with MultiWorkerMirroredStrategy")
        sub.add_argument(
            "--dry-run", action="store_true", help="print the commands (and startup scripts) instead of running them"
        )
        return sub

    create = command("create", "Create the training VMs; each installs nfp and trains at boot.")
    create.add_argument(
        "--bucket", required=True, help="gs://BUCKET[/prefix] for shards, checkpoints, backups and the project tarball"
    )
    create.add_argument(
        "--tracking-uri", required=True, help="MLflow tracking server the chief logs to, e.g. http://10.0.0.5:5000"
    )
    create.add_argument(
        "--config",
        default=None,
        help="config inside the project (default: configs/multi_gpu.yaml, multi_node.yaml for N > 1)",
    )
    create.add_argument(
        "--run-name", default=None, help="train.output_dir = BUCKET/runs/RUN_NAME (default: --name); reuse it to resume"
    )
    create.add_argument("--machine-type", default="a3-highgpu-8g", help="default a3-highgpu-8g (8× H100 80GB built in)")
    create.add_argument(
        "--accelerator-type",
        default="nvidia-h100-80gb",
        help="for N1 machines, e.g. nvidia-tesla-t4, nvidia-tesla-v100",
    )
    create.add_argument(
        "--accelerator-count", type=int, default=8, help="GPUs per VM (ignored for A2/A3/A4/G2: built in)"
    )
    create.add_argument(
        "--image-family", default="common-cu128-ubuntu-2204-nvidia-570", help="Deep Learning VM image family"
    )
    create.add_argument("--image-project", default="deeplearning-platform-release")
    create.add_argument("--boot-disk-size", default="200GB")
    create.add_argument("--network", default=None, help="VPC network (default: the project's default network)")
    create.add_argument("--service-account", default=None, help="VM service account (needs read/write on the bucket)")
    create.add_argument(
        "--spot", action="store_true", help="Spot VMs (much cheaper, may be stopped at any time; restart resumes)"
    )
    create.add_argument("--max-run-duration", default=None, help="stop the VMs after this long, e.g. 8h (a cost cap)")
    create.add_argument("--port", type=int, default=tf_config.DEFAULT_PORT, help="workers' gRPC port (N > 1)")
    create.add_argument("--source", default=None, help="gs:// project tarball (default: upload `git archive HEAD`)")
    create.add_argument(
        "--keep-running", dest="stop_when_done", action="store_false", help="do not stop the VM when training ends"
    )
    create.add_argument(
        "--script-dir", default=str(Path(tempfile.gettempdir()) / "nfp-gce"), help="where startup scripts are written"
    )
    create.add_argument(
        "--sweep",
        action="store_true",
        help="each VM runs `nfp sweep` (a worker per GPU) on the config's study instead of training with the others "
        "(default config: configs/sweep.yaml)",
    )
    create.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="nfp config overrides, e.g. train.epochs=20")
    command("start", "Start stopped VMs again (all of them after a spot preemption); training resumes from the backup.")
    command("delete", "Delete the training VMs and their boot disks (the bucket is kept).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        plan = {"create": plan_create, "start": plan_start, "delete": plan_delete}[args.command](args)
    except NfpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "create" and args.source is None and _git("status", "--porcelain"):
        print("warning: uncommitted changes are not shipped (the VMs get `git archive HEAD`)", file=sys.stderr)
    if args.dry_run:
        for path, text in plan.files.items():
            print(f"# ---- startup script {path}\n{text}# ---- end of {path}\n")
        for cmd in plan.commands:
            print(shlex.join(cmd))
        return 0
    for path, text in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(text)
        path.with_suffix(".tmp").replace(path)
    for cmd in plan.commands:
        print("+ " + shlex.join(cmd), file=sys.stderr)
        if subprocess.run(cmd).returncode != 0:
            print(
                f"error: {shlex.join(cmd[:4])} … failed (see above); VMs created so far keep running: `delete` removes them",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
