"""TF_CONFIG from SkyPilot env vars, a host list, or passed through (Vertex AI); one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from nfp.distribute import tf_config
from nfp.errors import ConfigError


def skypilot_env(rank, ips=("10.0.0.1", "10.0.0.2", "10.0.0.3"), **extra):
    env = {
        "SKYPILOT_NODE_IPS": "\n".join(ips) + "\n",
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NUM_NODES": str(len(ips)),
    }
    env.update(extra)
    return env


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_skypilot_env_gives_every_rank_the_same_cluster_and_its_own_task(rank):
    config = tf_config.resolve(skypilot_env(rank))
    assert config == {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222", "10.0.0.3:2222"]},
        "task": {"type": "worker", "index": rank},
    }
    assert tf_config.is_chief(config) == (rank == 0)
    assert tf_config.num_workers(config) == 3


def test_skypilot_port_comes_from_the_argument_then_the_env_var():
    assert tf_config.resolve(skypilot_env(0, NFP_WORKER_PORT="3000"))["cluster"]["worker"][1] == "10.0.0.2:3000"
    assert (
        tf_config.resolve(skypilot_env(0, NFP_WORKER_PORT="3000"), port=4000)["cluster"]["worker"][1] == "10.0.0.2:4000"
    )


def test_skypilot_ips_with_ports_let_workers_share_one_host():
    config = tf_config.resolve(skypilot_env(1, ips=("127.0.0.1:20001", "127.0.0.1:20002")))
    assert config["cluster"]["worker"] == ["127.0.0.1:20001", "127.0.0.1:20002"]
    assert config["task"] == {"type": "worker", "index": 1}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (skypilot_env(3), "SKYPILOT_NODE_RANK: got 3, expected 0..2"),
        (skypilot_env(-1), "SKYPILOT_NODE_RANK: got -1"),
        (skypilot_env("one"), "SKYPILOT_NODE_RANK: got 'one', expected an integer"),
        (skypilot_env(""), "SKYPILOT_NODE_RANK: missing"),
        (skypilot_env(0, SKYPILOT_NUM_NODES="4"), "SKYPILOT_NUM_NODES: got '4', but SKYPILOT_NODE_IPS lists 3"),
        (skypilot_env(0, ips=("10.0.0.1", "10.0.0.1")), "10.0.0.1:2222 appears twice"),
        (skypilot_env(0, NFP_WORKER_PORT="http"), "NFP_WORKER_PORT: got 'http', expected an integer"),
        (skypilot_env(0, NFP_WORKER_PORT="70000"), "is 70000, expected 1..65535"),
    ],
)
def test_bad_skypilot_env_is_a_one_line_config_error(env, message):
    with pytest.raises(ConfigError) as err:
        tf_config.resolve(env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_host_list_builds_the_task_for_the_given_index():
    config = tf_config.resolve({}, hosts="vm-0:2222, vm-1:2223", index=1)
    assert config == {"cluster": {"worker": ["vm-0:2222", "vm-1:2223"]}, "task": {"type": "worker", "index": 1}}


def test_host_list_port_fills_in_hosts_without_one_and_ipv6_is_bracketed():
    config = tf_config.resolve({}, hosts="vm-0,vm-1:9000,::1", index=0, port=7000)
    assert config["cluster"]["worker"] == ["vm-0:7000", "vm-1:9000", "[::1]:7000"]


@pytest.mark.parametrize(
    ("hosts", "index", "message"),
    [
        ("vm-0:2222,vm-1", 0, "--hosts: 'vm-1' has no port"),
        ("vm-0:2222,vm-0:2222", 0, "--hosts: vm-0:2222 appears twice"),
        ("vm-0:2222,vm-1:2222", 2, "--index: got 2, expected 0..1"),
        ("vm-0:2222", None, "--index: missing"),
        ("vm-0:x", 0, "--hosts: port of 'vm-0:x': got 'x', expected an integer"),
        (":2222", 0, "--hosts: ':2222' has no host"),
        (" , ", 0, "--hosts: got ' , ', expected HOST:PORT"),
    ],
)
def test_bad_host_list_is_a_one_line_config_error(hosts, index, message):
    with pytest.raises(ConfigError) as err:
        tf_config.resolve({}, hosts=hosts, index=index)
    assert message in str(err.value) and "\n" not in str(err.value)


VERTEX = {
    "cluster": {"chief": ["cmle-training-workerpool0-0:2222"], "worker": ["workerpool1-0:2222", "workerpool1-1:2222"]},
    "task": {"type": "worker", "index": 1},
    "job": {"worker_pool_specs": []},  # Vertex adds keys of its own: keep them
}


def test_vertex_tf_config_passes_through_unchanged_with_chief_from_the_chief_task():
    config = tf_config.resolve({"TF_CONFIG": json.dumps(VERTEX)})
    assert config == VERTEX
    assert not tf_config.is_chief(config)
    assert tf_config.is_chief({**VERTEX, "task": {"type": "chief", "index": 0}})
    assert not tf_config.is_chief({**VERTEX, "task": {"type": "worker", "index": 0}})
    assert tf_config.num_workers(config) == 3


def test_no_cluster_means_a_single_chief():
    assert tf_config.is_chief(None) and tf_config.num_workers(None) == 1


def test_existing_tf_config_wins_over_skypilot_env():
    env = skypilot_env(1, TF_CONFIG=json.dumps(VERTEX))
    assert tf_config.resolve(env) == VERTEX


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{cluster:", "TF_CONFIG: not valid JSON"),
        ("[]", 'TF_CONFIG: expected {"cluster"'),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG.task: missing"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "TF_CONFIG.task.type: got 'chief'"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
            "TF_CONFIG.task.index: got 1, expected 0..0",
        ),
        (
            '{"cluster": {"worker": ["a:1", "a"]}, "task": {"type": "worker"}}',
            "TF_CONFIG.cluster.worker: 'a' has no port",
        ),
        (
            '{"cluster": {"chief": ["a:1"], "worker": ["a:1"]}, "task": {"type": "chief"}}',
            "TF_CONFIG.cluster: a:1 appears twice",
        ),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps"}}', "TF_CONFIG.cluster.ps: unknown task type"),
        (
            '{"cluster": {"worker": []}, "task": {"type": "worker"}}',
            "TF_CONFIG.cluster.worker: got [], expected a list",
        ),
    ],
)
def test_bad_tf_config_is_a_one_line_config_error(text, message):
    with pytest.raises(ConfigError) as err:
        tf_config.resolve({"TF_CONFIG": text})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_nothing_to_build_from_is_an_error():
    with pytest.raises(ConfigError, match="TF_CONFIG: not set and no SKYPILOT_NODE_IPS"):
        tf_config.resolve({})


def test_ensure_sets_tf_config_from_skypilot_only_for_several_nodes():
    env = skypilot_env(2)
    config = tf_config.ensure_tf_config(env)
    assert json.loads(env["TF_CONFIG"]) == config and config["task"]["index"] == 2

    single = skypilot_env(0, ips=("10.0.0.1",))
    assert tf_config.ensure_tf_config(single) is None and "TF_CONFIG" not in single
    assert tf_config.ensure_tf_config({}) is None


def test_ensure_keeps_and_validates_an_existing_tf_config():
    env = skypilot_env(0, TF_CONFIG=json.dumps(VERTEX))
    assert tf_config.ensure_tf_config(env) == VERTEX and json.loads(env["TF_CONFIG"]) == VERTEX
    with pytest.raises(ConfigError, match="TF_CONFIG: not valid JSON"):
        tf_config.ensure_tf_config({"TF_CONFIG": "nope"})


def test_cli_prints_tf_config_from_skypilot_env():
    env = {"PATH": "", **skypilot_env(1, ips=("10.0.0.1", "10.0.0.2"))}
    out = subprocess.run(
        [sys.executable, "-m", "nfp", "tf-config"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 1},
    }


def test_cli_prints_tf_config_from_hosts_and_reports_bad_input_in_one_line():
    run = [sys.executable, "-m", "nfp", "tf-config", "--hosts", "vm-0,vm-1", "--port", "5000", "--index", "0"]
    out = subprocess.run(run, env={}, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["cluster"]["worker"] == ["vm-0:5000", "vm-1:5000"]

    bad = subprocess.run(run[:-1] + ["5"], env={}, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: --index: got 5, expected 0..1 (--hosts lists 2 hosts)\n"
