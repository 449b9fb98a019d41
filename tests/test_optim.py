"""Loss, optimizer and the per-step learning-rate schedules of `cfg.train`, resumed from `optimizer.iterations`."""

import itertools
import math

import keras
import numpy as np
import pytest

from nfp import callbacks as cb
from nfp.config import load_config
from nfp.model import build_model
from nfp.optim import WarmupStepDecay, build_loss, build_optimizer, learning_rate_schedule, plateau_callback

SPE = 4  # steps per epoch


def _train_cfg(tiny_overrides, *extra):
    return load_config(None, [*tiny_overrides, "train.learning_rate=0.1", "train.epochs=6", *extra]).train


def _lrs(schedule, steps):
    return [float(schedule(step)) if callable(schedule) else schedule for step in steps]


def test_optimizer_and_loss_follow_the_config(tiny_overrides):
    t = load_config(
        None,
        [*tiny_overrides, "train.optimizer=adamw", "train.learning_rate=0.01", "train.scale_lr=true", "train.loss=mse"],
    ).train
    optimizer = build_optimizer(t, replicas=2, steps_per_epoch=SPE)
    assert isinstance(optimizer, keras.optimizers.AdamW) and float(optimizer.learning_rate) == pytest.approx(0.02)
    assert isinstance(build_loss(t), keras.losses.MeanSquaredError)


def test_schedules_move_the_learning_rate_every_step(tiny_overrides):
    def lr(*extra, replicas=1):
        return learning_rate_schedule(_train_cfg(tiny_overrides, *extra), replicas, SPE)

    steps = range(6 * SPE + 1)
    assert _lrs(lr(), steps) == pytest.approx([0.1] * len(steps))
    step = _lrs(lr("train.schedule.name=step", "train.schedule.step_epochs=2", "train.schedule.gamma=0.5"), steps)
    assert step == pytest.approx([0.1 * 0.5 ** (s // (2 * SPE)) for s in steps])  # a stair every 2 epochs

    cosine = _lrs(
        lr("train.schedule.name=cosine", "train.schedule.warmup_epochs=2", "train.schedule.min_lr=0.01"), steps
    )
    w = 2 * SPE
    # linear, per step, from base/2 (the first of 2 warm-up epochs' LR when it moved once an epoch)
    assert cosine[:w] == pytest.approx([0.05 + 0.05 * s / w for s in range(w)])
    assert cosine[w] == pytest.approx(0.1)  # the peak at the end of the warm-up
    span = 4 * SPE  # the rest of training: from the peak to min_lr, half a cosine
    assert cosine[w + span // 4] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine[-1] == pytest.approx(0.01)
    assert all(a < b for a, b in itertools.pairwise(cosine[: w + 1]))
    assert all(a > b for a, b in itertools.pairwise(cosine[w:]))

    warm_step = lr(
        "train.schedule.name=step", "train.schedule.warmup_epochs=2", "train.schedule.step_epochs=1",
        "train.schedule.gamma=0.5",
    )  # fmt: skip
    assert isinstance(warm_step, WarmupStepDecay)
    assert _lrs(warm_step, [0, SPE, 2 * SPE, 3 * SPE - 1, 3 * SPE, 4 * SPE]) == pytest.approx(
        [0.05, 0.075, 0.1, 0.1, 0.05, 0.025]
    )
    assert float(lr("train.scale_lr=true", replicas=4)(0)) == pytest.approx(0.4)
    assert float(lr("train.scale_lr=false", replicas=4)(0)) == pytest.approx(0.1)
    assert lr("train.schedule.name=plateau") == 0.1  # a float: ReduceLROnPlateau sets it


def _data(n=8):
    import tensorflow as tf

    x = np.random.default_rng(0).random((n, 6, 16, 16, 1), dtype=np.float32)
    return tf.data.Dataset.from_tensor_slices((x[:, :-1], x[:, 1:])).batch(2)  # 4 steps per epoch


def _fit(cfg, epochs, callbacks, steps_per_epoch=SPE):
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, image_size=16)
    model.compile(build_optimizer(cfg.train, 1, steps_per_epoch), build_loss(cfg.train))
    history = model.fit(_data(), epochs=epochs, callbacks=callbacks, verbose=0)
    return model, history.history


def test_a_resumed_run_continues_the_schedule_from_the_optimizer_step(tiny_overrides, tmp_path):
    cfg = load_config(
        None, [*tiny_overrides, "train.learning_rate=0.1", "train.epochs=4", "train.schedule.name=cosine",
               "train.schedule.warmup_epochs=1"],
    )  # fmt: skip
    _, whole = _fit(cfg, 4, [cb.EpochStats(8)])
    _fit(cfg, 2, [cb.EpochStats(8), cb.Backup(str(tmp_path / "backup"))])  # killed after epoch 2
    model, resumed = _fit(cfg, 4, [cb.EpochStats(8), cb.Backup(str(tmp_path / "backup"))])
    assert int(model.optimizer.iterations) == 4 * SPE
    assert resumed["learning_rate"] == pytest.approx(whole["learning_rate"][2:], rel=1e-5)  # epochs 3 and 4
    assert whole["learning_rate"][:2] == pytest.approx([0.1, 0.1])  # one warm-up epoch starts at base/1: the peak
    assert float(model.optimizer.learning_rate) == pytest.approx(cfg.train.schedule.min_lr, abs=1e-6)


def test_a_changed_learning_rate_applies_to_a_resumed_constant_schedule(tiny_overrides, tmp_path):
    """A float LR lives in an optimizer variable the backup restores; the constant schedule is not one."""
    backup = str(tmp_path / "backup")
    cfg = load_config(None, [*tiny_overrides, "train.learning_rate=0.1"])
    _fit(cfg, 1, [cb.Backup(backup)])
    model, _ = _fit(load_config(None, [*tiny_overrides, "train.learning_rate=0.01"]), 2, [cb.Backup(backup)])
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


def test_a_checkpoint_saved_with_the_warm_up_step_schedule_loads(tiny_overrides, tmp_path):
    cfg = load_config(
        None, [*tiny_overrides, "train.schedule.name=step", "train.schedule.warmup_epochs=1"],
    )  # fmt: skip
    model, _ = _fit(cfg, 1, [])
    model.save(tmp_path / "m.keras")
    assert keras.saving.get_registered_object("nfp>WarmupStepDecay") is WarmupStepDecay  # nfp.layers registers it
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    schedule = loaded.optimizer._learning_rate
    assert (
        isinstance(schedule, WarmupStepDecay) and schedule.get_config() == model.optimizer._learning_rate.get_config()
    )
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(model.optimizer.learning_rate))


def test_plateau_warms_up_per_step_then_reduces_on_a_plateau(tiny_overrides):
    cfg = load_config(
        None,
        [*tiny_overrides, "train.learning_rate=0.1", "train.schedule.name=plateau", "train.schedule.warmup_epochs=2",
         "train.schedule.patience=1", "train.schedule.gamma=0.5", "train.schedule.min_lr=0.0"],
    )  # fmt: skip
    plateau = plateau_callback(cfg.train, 1, SPE, monitor="never_better", mode="min")
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch, logs=None):
            logs["never_better"] = 1.0  # flat: a plateau every epoch once patience has passed

    model, history = _fit(cfg, 5, [Spy(), plateau, cb.EpochStats(8)])  # in the order build_callbacks puts them
    w = 2 * SPE
    assert seen[:w] == pytest.approx([0.05 + 0.05 * s / w for s in range(w)])  # from base/2, per step
    assert seen[w : w + SPE] == pytest.approx([0.1] * SPE)  # the warm-up epochs do not count towards a plateau
    # epoch 3 sets the best, epochs 4 and 5 beat it by nothing: × 0.5 after each (each epoch logs its first step's LR)
    assert history["learning_rate"] == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.05])
    assert seen[-1] == pytest.approx(0.05) and float(model.optimizer.learning_rate) == pytest.approx(0.025)
