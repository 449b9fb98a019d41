"""A training job's plan: global batch and steps from the per-replica batch, the replicas and the training clips."""

import pytest

from nfp.config import load_config
from nfp.distribute import ClusterInfo
from nfp.errors import ConfigError
from nfp.training.job import plan

CHIEF = ClusterInfo(is_chief=True, task_index=0, num_workers=1)


def test_global_batch_is_the_per_replica_batch_times_the_replicas():
    job = plan(load_config(None, ["train.batch_size=8"]).train, cluster=CHIEF, replicas=4, train_clips=100)
    assert job.global_batch == 32 and job.steps_per_epoch == 3 and job.clips_per_epoch == 96  # full batches only


def test_steps_per_epoch_from_the_config_wins():
    job = plan(
        load_config(None, ["train.batch_size=2", "train.steps_per_epoch=7"]).train,
        cluster=CHIEF,
        replicas=1,
        train_clips=100,
    )
    assert job.steps_per_epoch == 7


def test_a_global_batch_larger_than_the_training_split_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match=r"train.batch_size: global batch 16 \(8 × 2 replicas\) exceeds the 10 training clips, expected at most 5",
    ):
        plan(load_config(None, ["train.batch_size=8"]).train, cluster=CHIEF, replicas=2, train_clips=10)
