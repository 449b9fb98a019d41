"""The config schema: the one place every knob is defined, typed and checked.

A YAML file plus `key.path=value` overrides becomes a frozen tree of dataclasses (schema.py), loaded by load.py and
checked across keys by checks.py. Every bad value is reported as one line naming its key path, the value and what is
allowed, before any work starts.
"""

from nfp.config.load import load_config, loss_for
from nfp.config.schema import (
    FILE_SOURCES,
    MOVING_MNIST_URL,
    CheckpointConfig,
    Config,
    DataConfig,
    DistributeConfig,
    EarlyStoppingConfig,
    EvaluateConfig,
    ImagesConfig,
    ModelConfig,
    ScheduleConfig,
    SplitConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "FILE_SOURCES",
    "MOVING_MNIST_URL",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "DistributeConfig",
    "EarlyStoppingConfig",
    "EvaluateConfig",
    "ImagesConfig",
    "ModelConfig",
    "ScheduleConfig",
    "SplitConfig",
    "TrackingConfig",
    "TrainConfig",
    "load_config",
    "loss_for",
]
