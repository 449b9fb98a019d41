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
        (skypilot_env(0, NFP_WORKER_PORT="70000"), "NFP_WORKER_PORT: got '70000', expected a port 1..65535"),
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


# --------------------------------------------------------------------------- separators, bad entries, port blame
THREE = ["10.0.0.1:2222", "10.0.0.2:2222", "10.0.0.3:2222"]


@pytest.mark.parametrize(
    "ips",
    [
        "10.0.0.1\n10.0.0.2\n10.0.0.3",  # SkyPilot's own
        "10.0.0.1,10.0.0.2,10.0.0.3",
        "10.0.0.1 10.0.0.2 10.0.0.3",
        "10.0.0.1\t10.0.0.2\t10.0.0.3",
        "10.0.0.1, 10.0.0.2,\n10.0.0.3,\n",
        "\n\n10.0.0.1\r\n10.0.0.2\n\n  10.0.0.3  \n\n",
        "10.0.0.1 ,\t10.0.0.2 ,, 10.0.0.3,",
    ],
    ids=["newlines", "commas", "spaces", "tabs", "mixed-trailing", "blank-lines-crlf", "doubled"],
)
def test_skypilot_ips_split_on_newlines_commas_spaces_and_tabs(ips):
    env = {"SKYPILOT_NODE_IPS": ips, "SKYPILOT_NODE_RANK": "1"}  # no SKYPILOT_NUM_NODES to catch a miscount
    config = tf_config.resolve(env)
    assert config == {"cluster": {"worker": THREE}, "task": {"type": "worker", "index": 1}}
    assert tf_config.ensure_tf_config(dict(env)) == config  # the same cluster for `nfp train`


def test_cli_prints_the_whole_cluster_from_comma_separated_skypilot_ips():
    env = {"PATH": "", "SKYPILOT_NODE_IPS": "10.0.0.1,10.0.0.2 10.0.0.3", "SKYPILOT_NODE_RANK": "2"}
    out = subprocess.run(
        [sys.executable, "-m", "nfp", "tf-config"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {"cluster": {"worker": THREE}, "task": {"type": "worker", "index": 2}}


@pytest.mark.parametrize(
    ("ips", "rank", "message"),
    [
        ("10.0.0.1;10.0.0.2", 0, "SKYPILOT_NODE_IPS: '10.0.0.1;10.0.0.2' is not an IP address or hostname"),
        ("10.0.0.1|10.0.0.2", 0, "SKYPILOT_NODE_IPS: '10.0.0.1|10.0.0.2' is not an IP address or hostname"),
        ("10.0.0.1\n10.0.0.256", 0, "SKYPILOT_NODE_IPS: '10.0.0.256' is not an IP address or hostname"),
        ("node_1,node_2", 0, "SKYPILOT_NODE_IPS: 'node_1' is not an IP address or hostname"),
        ("-node,node-2", 0, "SKYPILOT_NODE_IPS: '-node' is not an IP address or hostname"),
        ("10.0.0.1/24", 0, "SKYPILOT_NODE_IPS: '10.0.0.1/24' is not an IP address or hostname"),
        ("http://10.0.0.1", 0, "SKYPILOT_NODE_IPS: port of 'http://10.0.0.1': got '//10.0.0.1', expected an integer"),
        ("10.0.0.1,10.0.0.1", 0, "SKYPILOT_NODE_IPS: 10.0.0.1:2222 appears twice"),
        ("10.0.0.1 10.0.0.2\n10.0.0.1", 1, "SKYPILOT_NODE_IPS: 10.0.0.1:2222 appears twice"),
        ("10.0.0.1,10.0.0.2", 2, "SKYPILOT_NODE_RANK: got 2, expected 0..1 (SKYPILOT_NODE_IPS lists 2 nodes)"),
        ("10.0.0.1 10.0.0.2 10.0.0.3", 5, "SKYPILOT_NODE_RANK: got 5, expected 0..2"),
        (" ,\n\t, ", 0, "SKYPILOT_NODE_IPS: got ' ,\\n\\t, ', expected node IPs"),
    ],
)
def test_bad_skypilot_ips_are_refused_naming_the_env_var(ips, rank, message):
    with pytest.raises(ConfigError) as err:
        tf_config.resolve({"SKYPILOT_NODE_IPS": ips, "SKYPILOT_NODE_RANK": str(rank)})
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("ips", ["10.0.0.1;10.0.0.2", "10.0.0.1|10.0.0.2", "node_1"])
def test_training_refuses_a_single_bad_skypilot_entry_instead_of_training_alone(ips):
    with pytest.raises(ConfigError, match="SKYPILOT_NODE_IPS: .* is not an IP address or hostname"):
        tf_config.ensure_tf_config({"SKYPILOT_NODE_IPS": ips, "SKYPILOT_NODE_RANK": "0"})


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ("vm_0:2222,vm-1:2222", "--hosts: 'vm_0:2222' is not an IP address or hostname"),
        ("vm-0:2222;vm-1:2222", "--hosts: 'vm-0:2222;vm-1:2222' is not an IP address or hostname"),
        ("999.1.1.1:2222,vm-1:2222", "--hosts: '999.1.1.1:2222' is not an IP address or hostname"),
        ("[vm-0]:2222,vm-1:2222", "--hosts: '[vm-0]:2222' is not an IP address or hostname"),
    ],
)
def test_bad_hosts_in_the_host_list_are_refused(hosts, message):
    with pytest.raises(ConfigError) as err:
        tf_config.resolve({}, hosts=hosts, index=0)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_host_list_also_splits_on_spaces_and_newlines():
    config = tf_config.resolve({}, hosts="vm-0:1 vm-1:2\nvm-2:3,", index=2)
    assert config["cluster"]["worker"] == ["vm-0:1", "vm-1:2", "vm-2:3"]


def test_hostnames_ipv4_and_ipv6_are_accepted():
    config = tf_config.resolve(
        {}, hosts="localhost,vm-0.us-central1-a.c.p.internal,10.1.2.3,[fe80::1],::1", index=0, port=9
    )
    assert config["cluster"]["worker"] == [
        "localhost:9",
        "vm-0.us-central1-a.c.p.internal:9",
        "10.1.2.3:9",
        "[fe80::1]:9",
        "[::1]:9",
    ]


@pytest.mark.parametrize(
    ("environ", "kwargs", "message"),
    [
        ({}, {"hosts": "vm-0,vm-1", "index": 0, "port": 70000}, "--port: got 70000, expected a port 1..65535"),
        ({}, {"hosts": "vm-0,vm-1", "index": 0, "port": 0}, "--port: got 0, expected a port 1..65535"),
        ({}, {"hosts": "vm-0:1,vm-1:2", "index": 0, "port": -5}, "--port: got -5, expected a port 1..65535"),
        (skypilot_env(0), {"port": 65536}, "--port: got 65536, expected a port 1..65535"),
        (skypilot_env(0, NFP_WORKER_PORT="70000"), {}, "NFP_WORKER_PORT: got '70000', expected a port 1..65535"),
        (skypilot_env(0, NFP_WORKER_PORT="0"), {}, "NFP_WORKER_PORT: got '0', expected a port 1..65535"),
        ({"NFP_WORKER_PORT": "99999"}, {"hosts": "vm-0,vm-1", "index": 1}, "NFP_WORKER_PORT: got '99999'"),
        ({"NFP_WORKER_PORT": "x"}, {"hosts": "vm-0,vm-1", "index": 1}, "NFP_WORKER_PORT: got 'x', expected an integer"),
    ],
)
def test_a_bad_port_is_blamed_on_the_flag_or_env_var_that_gave_it(environ, kwargs, message):
    with pytest.raises(ConfigError) as err:
        tf_config.resolve(environ, **kwargs)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text, text
    assert "--hosts" not in text and "SKYPILOT_NODE_IPS" not in text


def test_a_bad_port_inside_an_entry_is_blamed_on_the_list():
    with pytest.raises(ConfigError, match=r"^SKYPILOT_NODE_IPS: port of '10.0.0.1:70000' is 70000, expected 1..65535"):
        tf_config.resolve({"SKYPILOT_NODE_IPS": "10.0.0.1:70000", "SKYPILOT_NODE_RANK": "0"})


def test_cli_blames_a_bad_port_on_the_port_flag():
    run = [sys.executable, "-m", "nfp", "tf-config", "--hosts", "vm-0,vm-1", "--port", "70000", "--index", "0"]
    bad = subprocess.run(run, env={}, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: --port: got 70000, expected a port 1..65535\n"


def test_a_bad_port_flag_is_refused_even_when_tf_config_is_set():
    with pytest.raises(ConfigError, match=r"^--port: got 0, expected a port 1..65535$"):
        tf_config.resolve({"TF_CONFIG": json.dumps(VERTEX)}, port=0)


@pytest.mark.parametrize("environ", [skypilot_env(0), {"TF_CONFIG": json.dumps(VERTEX)}, {}])
def test_index_without_hosts_is_refused_not_ignored(environ):
    with pytest.raises(ConfigError, match=r"^--index: given without --hosts"):
        tf_config.resolve(environ, index=1)
