"""The facts of one training job that its parts share: its place in the cluster, its batches, where it writes."""

from __future__ import annotations

from dataclasses import dataclass

from nfp.distribute import ClusterInfo
from nfp.errors import ConfigError
from nfp.rundir import RunDir


@dataclass(frozen=True)
class Job:
    cluster: ClusterInfo
    replicas: int  # in sync, over every worker
    global_batch: int  # clips per optimizer step
    steps_per_epoch: int
    output: RunDir

    @property
    def is_chief(self) -> bool:
        return self.cluster.is_chief

    @property
    def clips_per_epoch(self) -> int:
        return self.steps_per_epoch * self.global_batch


def plan(train_cfg, *, cluster: ClusterInfo, replicas: int, train_clips: int, output: RunDir | None = None) -> Job:
    """The job `train_cfg` describes on `replicas` replicas over `train_clips` training clips (full batches only),
    writing into `output` (the caller's RunDir of train.output_dir, handed on; else one made here)."""
    global_batch = train_cfg.batch_size * replicas
    if train_clips < global_batch:  # not even one step
        raise ConfigError(
            f"train.batch_size: global batch {global_batch} ({train_cfg.batch_size} × {replicas} replicas) exceeds the "
            f"{train_clips} training clips, expected at most {train_clips // replicas} per replica"
        )
    steps = train_cfg.steps_per_epoch or train_clips // global_batch
    return Job(cluster, replicas, global_batch, steps, output or RunDir(train_cfg.output_dir))
