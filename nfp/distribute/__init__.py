"""Which tf.distribute strategy trains, and who in the cluster is the chief."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from nfp.distribute import tf_config
from nfp.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    is_chief: bool
    task_index: int
    num_workers: int
    task_type: str = "worker"


def cluster_info() -> ClusterInfo:
    """This process's place in TF_CONFIG (a lone process is chief 0 of 1)."""
    config = tf_config.ensure_tf_config(os.environ)
    task = (config or {}).get("task", {})
    return ClusterInfo(
        is_chief=tf_config.is_chief(config),
        task_index=int(task.get("index", 0)),
        num_workers=tf_config.num_workers(config),
        task_type=task.get("type", "worker"),
    )


def make_strategy(dist_cfg):
    """The strategy `distribute.strategy` asks for; auto: multi-worker if TF_CONFIG has >1 task, Mirrored on GPUs, else default."""
    import tensorflow as tf

    config = tf_config.ensure_tf_config(os.environ)
    name = dist_cfg.strategy
    if name == "auto":
        if tf_config.num_workers(config) > 1:
            name = "multi_worker"
        elif tf.config.list_physical_devices("GPU"):
            name = "mirrored"
        else:
            name = "default"

    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=_check_devices(dist_cfg.devices) or None)
    else:
        if tf_config.num_workers(config) < 2:
            log.warning("distribute.strategy=multi_worker without a multi-worker TF_CONFIG: training as one worker")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        from nfp.distribute import multiworker

        multiworker.apply(strategy)
    log.info("strategy %s with %d replica(s)", strategy_name(strategy), strategy.num_replicas_in_sync)
    return strategy


def strategy_name(strategy) -> str:
    """The public tf.distribute name (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "MirroredStrategy"
    return "DefaultStrategy" if strategy is tf.distribute.get_strategy() else type(strategy).__name__


def _check_devices(devices: list[str]) -> list[str]:
    import tensorflow as tf

    known = {_short(d.name) for d in tf.config.list_logical_devices()}
    for i, dev in enumerate(devices):
        if _short(dev) not in known:
            raise ConfigError(f"distribute.devices[{i}]: got {dev!r}, expected one of {', '.join(sorted(known))}")
    return devices


def _short(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:0', '/gpu:0', 'GPU:0' → 'gpu:0'."""
    return device.lower().rpartition("device:")[2].lstrip("/")
