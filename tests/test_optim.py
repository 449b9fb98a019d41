"""Loss, optimizer and the per-step learning-rate schedules of `cfg.train`, resumed from `optimizer.iterations`."""

import dataclasses
import itertools
import math

import keras
import numpy as np
import pytest

from nfp.config import load_config
from nfp.errors import ConfigError
from nfp.models import build_model
from nfp.models.optim import (
    OneCycle,
    WarmupStepDecay,
    build_loss,
    build_optimizer,
    learning_rate_schedule,
    plateau_callback,
)
from nfp.training import callbacks as cb

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
    model = build_model(cfg.model, frame_shape=cfg.data.frame_shape)  # 16×16×1
    model.compile(build_optimizer(cfg.train, 1, steps_per_epoch), build_loss(cfg.train))
    model.optimizer.build(model.trainable_variables)  # as nfp train does: the step traced once, not twice
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
    assert (
        keras.saving.get_registered_object("nfp>WarmupStepDecay") is WarmupStepDecay
    )  # importing nfp.models.optim registers it
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


# --------------------------------------------------------------------------- onecycle: PyTorch's OneCycleLR
def _torch_one_cycle(max_lr, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
    """torch.optim.lr_scheduler.OneCycleLR's LR at scheduler steps 0 … total_steps − 1 (anneal_strategy="cos",
    three_phase=False), its get_lr() re-written in NumPy, float64, phase loop and all: the reference."""
    initial = max_lr / div_factor
    phases = [
        (float(pct_start * total_steps) - 1, initial, max_lr),
        (total_steps - 1, max_lr, initial / final_div_factor),
    ]
    lrs = []
    for step in range(total_steps):
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                lrs.append(end + (start - end) / 2.0 * (np.cos(np.pi * pct) + 1))
                break
            start_step = end_step
    return np.array(lrs)


# OneCycleLR(SGD(lr=0.1), max_lr=0.1, total_steps=24, final_div_factor=1e4), torch 2.13.0: the LR of each of the
# 24 optimizer steps (param_groups[0]["lr"] before optimizer.step(), then scheduler.step())
TORCH_24 = [
    0.004, 0.01003136243, 0.0266097275, 0.0495688399, 0.07313891927, 0.09139664518, 0.09975372752, 0.09944154355,
    0.09719417774, 0.09330129698, 0.08789863456, 0.08117456539, 0.07336353796, 0.06473789977, 0.05559840141,
    0.04626371027, 0.03705929951, 0.02830609982, 0.02030930949, 0.01334775302, 0.007664159383, 0.003456698743,
    0.0008720728516, 4e-07,
]  # fmt: skip


def test_onecycle_is_pytorchs_one_cycle_lr_step_by_step(tiny_overrides):
    assert _torch_one_cycle(0.1, 24) == pytest.approx(TORCH_24, rel=1e-9)  # the reference is PyTorch's
    schedule = learning_rate_schedule(_train_cfg(tiny_overrides, "train.schedule.name=onecycle"), 1, SPE)
    assert isinstance(schedule, OneCycle) and schedule.get_config()["total_steps"] == 6 * SPE  # train.epochs = 6
    assert _lrs(schedule, range(6 * SPE)) == pytest.approx(TORCH_24, rel=1e-5)
    for total in (1, 2, 3, 7, 37, 100, 1000, 33333):  # phase ends off and on whole steps, phase 1 empty, long runs
        steps = np.arange(total)
        assert np.asarray(OneCycle(0.1, total)(steps)) == pytest.approx(_torch_one_cycle(0.1, total), rel=1e-5)
    assert _lrs(schedule, [24, 25, 1000]) == pytest.approx([4e-7] * 3)  # past the end it holds; PyTorch raises


def test_onecycle_peaks_at_the_learning_rate_after_30_percent_and_ends_25e4_times_lower(tiny_overrides):
    t = _train_cfg(tiny_overrides, "train.schedule.name=onecycle", "train.epochs=10")
    lrs = np.array(_lrs(learning_rate_schedule(t, 1, 10), range(100)))  # 100 steps
    assert int(np.argmax(lrs)) == 29 and lrs[29] == pytest.approx(0.1)  # step 0.3 × 100 − 1
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs[-1] == pytest.approx(0.1 / 2.5e5)
    assert np.all(np.diff(lrs[:30]) > 0) and np.all(np.diff(lrs[29:]) < 0)
    scaled = learning_rate_schedule(dataclasses.replace(t, scale_lr=True), 4, 10)
    assert float(scaled(29)) == pytest.approx(0.4)  # the peak is the base LR: scale_lr scales it


def test_onecycle_follows_the_optimizer_step_so_a_resumed_run_continues_it(tiny_overrides):
    t = _train_cfg(tiny_overrides, "train.schedule.name=onecycle")
    optimizer = build_optimizer(t, 1, SPE)
    optimizer.build([keras.Variable(np.zeros(2, "float32"))])
    for step in (0, 6, 7, 17, 23):
        optimizer.iterations.assign(step)  # as a restored backup sets it
        assert float(optimizer.learning_rate) == pytest.approx(TORCH_24[step], rel=1e-5)
    optimizer.iterations.assign(6 * SPE + 3)  # past the end: the last LR
    assert float(optimizer.learning_rate) == pytest.approx(TORCH_24[-1], rel=1e-5)


def test_a_checkpoint_saved_with_the_onecycle_schedule_loads(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "train.schedule.name=onecycle"])
    model, _ = _fit(cfg, 1, [])
    model.save(tmp_path / "m.keras")
    assert keras.saving.get_registered_object("nfp>OneCycle") is OneCycle  # importing nfp.models.optim registers it
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    schedule = loaded.optimizer._learning_rate
    assert isinstance(schedule, OneCycle) and schedule.get_config() == model.optimizer._learning_rate.get_config()
    assert schedule.get_config() == {
        "max_learning_rate": cfg.train.learning_rate, "total_steps": cfg.train.epochs * SPE, "pct_start": 0.3,
        "div_factor": 25.0, "final_div_factor": 1e4, "name": "OneCycle",
    }  # fmt: skip
    assert int(loaded.optimizer.iterations) == SPE
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(model.optimizer.learning_rate))


def test_onecycle_refuses_a_warm_up_of_its_own(tiny_overrides):
    with pytest.raises(ConfigError) as err:
        _train_cfg(tiny_overrides, "train.schedule.name=onecycle", "train.schedule.warmup_epochs=2")
    assert str(err.value) == (
        "train.schedule.warmup_epochs: got 2, expected 0 with train.schedule.name: onecycle "
        "(its warm-up is the first 30% of train.epochs)"
    )
