"""What training minimises and how: the loss, the optimizer and the learning-rate schedule of `cfg.train`."""

from __future__ import annotations

import math

_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
_LOSSES = {"bce": "BinaryCrossentropy", "mse": "MeanSquaredError"}


def build_optimizer(train_cfg, replicas: int):
    """The Keras optimizer of train.optimizer at the base learning rate (the schedule callback moves it)."""
    import keras

    return getattr(keras.optimizers, _OPTIMIZERS[train_cfg.optimizer])(
        learning_rate=base_learning_rate(train_cfg, replicas)
    )


def build_loss(train_cfg):
    import keras

    return getattr(keras.losses, _LOSSES[train_cfg.loss])()


def base_learning_rate(train_cfg, replicas: int) -> float:
    """train.learning_rate, times the replica count when train.scale_lr (linear scaling rule)."""
    return train_cfg.learning_rate * (replicas if train_cfg.scale_lr else 1)


def learning_rate_at(epoch: int, train_cfg, replicas: int) -> float:
    """The scheduled learning rate of 0-based `epoch` (plateau: warm-up only, then ReduceLROnPlateau decides)."""
    s = train_cfg.schedule
    base = base_learning_rate(train_cfg, replicas)
    if epoch < s.warmup_epochs:
        return base * (epoch + 1) / s.warmup_epochs
    done = epoch - s.warmup_epochs
    if s.name == "step":
        return base * s.gamma ** (done // s.step_epochs)
    if s.name == "cosine":
        span = max(1, train_cfg.epochs - s.warmup_epochs)
        return s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * min(done, span) / span))
    return base
