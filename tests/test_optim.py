"""Loss, optimizer and learning-rate schedule from `cfg.train`."""

import itertools
import math

import keras
import pytest

from nfp.config import load_config
from nfp.optim import build_loss, build_optimizer, learning_rate_at


def test_optimizer_and_loss_follow_the_config(tiny_overrides):
    t = load_config(
        None,
        [*tiny_overrides, "train.optimizer=adamw", "train.learning_rate=0.01", "train.scale_lr=true", "train.loss=mse"],
    ).train
    optimizer = build_optimizer(t, replicas=2)
    assert isinstance(optimizer, keras.optimizers.AdamW) and float(optimizer.learning_rate) == pytest.approx(0.02)
    assert isinstance(build_loss(t), keras.losses.MeanSquaredError)


def test_learning_rate_schedules(tiny_overrides):
    def lrs(*extra, replicas=1):
        t = load_config(None, [*tiny_overrides, "train.learning_rate=0.1", "train.epochs=6", *extra]).train
        return [learning_rate_at(e, t, replicas) for e in range(6)]

    assert lrs() == pytest.approx([0.1] * 6)
    assert lrs("train.schedule.name=step", "train.schedule.step_epochs=2", "train.schedule.gamma=0.5") == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    )
    cosine = lrs("train.schedule.name=cosine", "train.schedule.warmup_epochs=2")
    assert cosine[:3] == pytest.approx([0.05, 0.1, 0.1])  # linear warm-up, then the cosine from the peak
    assert cosine[3] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert all(a >= b for a, b in itertools.pairwise(cosine[1:]))
    assert lrs("train.scale_lr=true", replicas=4)[0] == pytest.approx(0.4)
    assert lrs("train.scale_lr=false", replicas=4)[0] == pytest.approx(0.1)
