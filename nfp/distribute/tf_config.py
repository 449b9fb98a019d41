"""TF_CONFIG from any launcher: SkyPilot env vars, an explicit host list, or passed through (Vertex AI).

TF_CONFIG is `{"cluster": {"worker": ["host:port", …]}, "task": {"type": "worker", "index": i}}`;
Vertex AI adds a "chief" task type. Worker 0 is the chief unless a "chief" task exists.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, MutableMapping

from nfp.errors import ConfigError

PORT_ENV = "NFP_WORKER_PORT"
DEFAULT_PORT = 2222  # the port Vertex AI gives its replicas
_TASK_TYPES = ("chief", "worker", "evaluator")  # what MultiWorkerMirroredStrategy understands
# Host lists are split on newlines (SkyPilot's SKYPILOT_NODE_IPS), commas, spaces and tabs, in any mix.
_SEPARATORS = re.compile(r"[\s,]+")
_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\.?$){_LABEL}(\.{_LABEL})*\.?")  # RFC 1123


def resolve(
    environ: Mapping[str, str], *, hosts: str | None = None, index: int | None = None, port: int | None = None
) -> dict:
    """The TF_CONFIG dict for this node: from --hosts/--index, else environ['TF_CONFIG'], else SkyPilot env."""
    port = _check_port("--port", port)  # refused even where it would go unused
    if hosts is None and index is not None:
        raise ConfigError("--index: given without --hosts, expected both (TF_CONFIG and SkyPilot give the index)")
    if hosts is not None:
        if index is None:
            raise ConfigError("--index: missing, expected this node's position in --hosts (0 = chief)")
        return from_hosts(hosts, index, port=_port(environ, port, required=False))
    if environ.get("TF_CONFIG"):  # set on purpose (Vertex AI, a user): kept, as ensure_tf_config keeps it
        return parse(environ["TF_CONFIG"])
    if environ.get("SKYPILOT_NODE_IPS"):
        return from_skypilot(environ, port=port)
    raise ConfigError("TF_CONFIG: not set and no SKYPILOT_NODE_IPS, expected --hosts HOST:PORT,… --index I")


def ensure_tf_config(environ: MutableMapping[str, str]) -> dict | None:
    """Set environ['TF_CONFIG'] from SkyPilot env vars when it is unset and there are >1 nodes; return it."""
    if environ.get("TF_CONFIG"):
        return parse(environ["TF_CONFIG"])
    hosts = _skypilot_hosts(environ)
    if len(hosts) < 2:
        # one node trains alone, but a list nfp could not split (e.g. 'a;b') must not be mistaken for one node
        _addresses(hosts, DEFAULT_PORT, "SKYPILOT_NODE_IPS")
        return None
    config = from_skypilot(environ)
    environ["TF_CONFIG"] = json.dumps(config)
    return config


def is_chief(config: Mapping | None) -> bool:
    """Whether this task writes checkpoints and logs: the "chief" task, or worker 0 when there is none."""
    if not config or not config.get("cluster"):
        return True  # no cluster: a single process is its own chief
    task = config.get("task", {})
    if "chief" in config["cluster"]:
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def num_workers(config: Mapping | None) -> int:
    """Training processes in the cluster (chief + workers; 1 without a cluster)."""
    if not config or not config.get("cluster"):
        return 1
    return sum(len(config["cluster"].get(kind, [])) for kind in ("chief", "worker"))


def from_skypilot(environ: Mapping[str, str], *, port: int | None = None) -> dict:
    """TF_CONFIG from SKYPILOT_NODE_IPS (node 0 first; one per line, or comma/space separated) and SKYPILOT_NODE_RANK."""
    hosts = _skypilot_hosts(environ)
    if not hosts:
        raise ConfigError(
            f"SKYPILOT_NODE_IPS: got {environ.get('SKYPILOT_NODE_IPS', '')!r}, "
            "expected node IPs separated by newlines, commas or spaces"
        )
    expected = environ.get("SKYPILOT_NUM_NODES")
    if expected is not None and expected.strip() != str(len(hosts)):
        raise ConfigError(f"SKYPILOT_NUM_NODES: got {expected!r}, but SKYPILOT_NODE_IPS lists {len(hosts)} nodes")
    if not environ.get("SKYPILOT_NODE_RANK"):
        raise ConfigError("SKYPILOT_NODE_RANK: missing, expected this node's rank (SkyPilot sets it on every node)")
    rank = _int("SKYPILOT_NODE_RANK", environ["SKYPILOT_NODE_RANK"])
    if not 0 <= rank < len(hosts):
        raise ConfigError(
            f"SKYPILOT_NODE_RANK: got {rank}, expected 0..{len(hosts) - 1} (SKYPILOT_NODE_IPS lists {len(hosts)} nodes)"
        )
    return _build(
        _addresses(hosts, _port(environ, port, required=True), "SKYPILOT_NODE_IPS"), rank, "SKYPILOT_NODE_IPS"
    )


def from_hosts(hosts: str, index: int, *, port: int | None = None) -> dict:
    """TF_CONFIG from 'host:port,host:port,…' (worker 0 first; commas or whitespace); `port` fills in hosts without one."""
    entries = _split(hosts)
    if not entries:
        raise ConfigError(f"--hosts: got {hosts!r}, expected HOST:PORT,HOST:PORT,…")
    if not 0 <= index < len(entries):
        raise ConfigError(f"--index: got {index}, expected 0..{len(entries) - 1} (--hosts lists {len(entries)} hosts)")
    return _build(_addresses(entries, _check_port("--port", port), "--hosts"), index, "--hosts")


def parse(text: str) -> dict:
    """Validate a TF_CONFIG JSON string (as Vertex AI or a user sets it) and return it unchanged as a dict."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"TF_CONFIG: not valid JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not config["cluster"]:
        raise ConfigError('TF_CONFIG: expected {"cluster": {"worker": ["host:port", …]}, "task": {…}}')
    cluster = config["cluster"]
    for kind, addresses in cluster.items():
        if kind not in _TASK_TYPES:
            raise ConfigError(f"TF_CONFIG.cluster.{kind}: unknown task type, expected {', '.join(_TASK_TYPES)}")
        if not isinstance(addresses, list) or not addresses:
            raise ConfigError(f"TF_CONFIG.cluster.{kind}: got {addresses!r}, expected a list of host:port")
        _addresses(addresses, None, f"TF_CONFIG.cluster.{kind}")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError(f"TF_CONFIG.cluster.chief: got {len(cluster['chief'])} addresses, expected exactly one")
    _check_unique([a for kind in cluster.values() for a in kind], "TF_CONFIG.cluster")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise ConfigError('TF_CONFIG.task: missing, expected {"type": "worker", "index": I}')
    kind, index = task["type"], task.get("index", 0)
    if kind not in cluster:
        raise ConfigError(f"TF_CONFIG.task.type: got {kind!r}, expected one of the cluster's: {', '.join(cluster)}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(
            f"TF_CONFIG.task.index: got {index!r}, expected 0..{len(cluster[kind]) - 1} for type {kind!r}"
        )
    return config


# --------------------------------------------------------------------------- helpers
def _build(addresses: list[str], index: int, where: str) -> dict:
    _check_unique(addresses, where)
    return {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}


def _skypilot_hosts(environ: Mapping[str, str]) -> list[str]:
    return _split(environ.get("SKYPILOT_NODE_IPS", ""))


def _split(text: str) -> list[str]:
    return [entry for entry in _SEPARATORS.split(text) if entry]


def _addresses(entries: list, port: int | None, where: str) -> list[str]:
    """'host' or 'host:port' entries → 'host:port' (IPv6 as [addr]:port); `port` fills in missing ones."""
    out = []
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise ConfigError(f"{where}: got {entry!r}, expected host:port")
        host, sep, tail = entry.rpartition(":")
        if not sep or (entry.count(":") > 1 and not host.endswith("]")):  # no port (bare IPv6 included)
            host, tail = entry, None
        if not host:
            raise ConfigError(f"{where}: {entry!r} has no host, expected host:port")
        if not _is_host(host):
            lists = "" if where.startswith("TF_CONFIG") else " (entries separated by newlines, commas or spaces)"
            raise ConfigError(f"{where}: {entry!r} is not an IP address or hostname, expected host[:port]{lists}")
        if tail is None:
            if port is None:
                raise ConfigError(f"{where}: {entry!r} has no port, expected host:port (or give --port / {PORT_ENV})")
            tail = str(port)
        number = _int(f"{where}: port of {entry!r}", tail)
        if not 0 < number < 65536:
            raise ConfigError(f"{where}: port of {entry!r} is {number}, expected 1..65535")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        out.append(f"{host}:{number}")
    return out


def _is_host(host: str) -> bool:
    """An IPv4/IPv6 address (IPv6 bracketed or bare) or an RFC 1123 hostname; '10.0.0.256' is neither."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        pass
    return bare == host and bool(_HOSTNAME.fullmatch(host)) and not re.fullmatch(r"[0-9.]+", host)


def _check_unique(addresses: list[str], where: str) -> None:
    seen = set()
    for address in addresses:
        if address in seen:
            raise ConfigError(
                f"{where}: {address} appears twice, expected one address per worker (give ports to share a host)"
            )
        seen.add(address)


def _port(environ: Mapping[str, str], port: int | None, *, required: bool) -> int | None:
    """The port for entries without one: --port, else NFP_WORKER_PORT, each blamed by name when out of range."""
    if port is not None:
        return _check_port("--port", port)
    if environ.get(PORT_ENV):
        return _check_port(PORT_ENV, environ[PORT_ENV])
    return DEFAULT_PORT if required else None


def _check_port(where: str, value) -> int | None:
    if value is None:
        return None
    number = _int(where, value)
    if not 0 < number < 65536:
        raise ConfigError(f"{where}: got {value!r}, expected a port 1..65535")
    return number


def _int(where: str, text) -> int:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: got {text!r}, expected an integer") from None
