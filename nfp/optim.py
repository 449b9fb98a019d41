"""What training minimises and how: the loss, the optimizer and the learning-rate schedule of `cfg.train`.

The schedule is counted in optimizer steps (`optimizer.iterations`), so a resumed run continues it from the
restored step count with no callback: `train.schedule`'s epochs become steps with `steps_per_epoch`.

- constant: `CosineDecay(alpha=1.0)`, which stays at the base LR after its warm-up, if any. Not a float: the
  optimizer keeps a float LR in a variable that a resumed run restores, so a changed train.learning_rate would not
  apply.
- cosine: `CosineDecay` with its warm-up, from the base LR to `min_lr` at `train.epochs`.
- step: `ExponentialDecay(staircase=True)`, × gamma every `step_epochs`; with warm-up, `WarmupStepDecay`.
- plateau: a float LR (ReduceLROnPlateau must set it) and `plateau_callback`, which warms up itself.

Every warm-up is linear, CosineDecay's, over `warmup_epochs` E × `steps_per_epoch` steps: from base/E at step 0
(the first warm-up epoch's LR when it moved once an epoch, so the mean over the warm-up is unchanged) to base at its
end; the decay is counted from the end of the warm-up.
"""

from __future__ import annotations

import keras
from keras import ops

_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
_LOSSES = {"bce": "BinaryCrossentropy", "mse": "MeanSquaredError"}


def build_optimizer(train_cfg, replicas: int, steps_per_epoch: int):
    """The Keras optimizer of train.optimizer, its learning rate train.schedule per step (see the module docstring)."""
    return getattr(keras.optimizers, _OPTIMIZERS[train_cfg.optimizer])(
        learning_rate=learning_rate_schedule(train_cfg, replicas, steps_per_epoch)
    )


def build_loss(train_cfg):
    return getattr(keras.losses, _LOSSES[train_cfg.loss])()


def base_learning_rate(train_cfg, replicas: int) -> float:
    """train.learning_rate, times the replica count when train.scale_lr (linear scaling rule)."""
    return train_cfg.learning_rate * (replicas if train_cfg.scale_lr else 1)


def learning_rate_schedule(train_cfg, replicas: int, steps_per_epoch: int):
    """train.schedule as a `keras.optimizers.schedules` schedule of the optimizer step, or a float where a callback
    moves the LR (plateau) or it is 0."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch: got {steps_per_epoch}, expected ≥ 1")
    s = train_cfg.schedule
    base = base_learning_rate(train_cfg, replicas)
    warmup = s.warmup_epochs * steps_per_epoch
    start = warmup_start(base, s.warmup_epochs)
    warmup_args = dict(initial_learning_rate=start, warmup_target=base, warmup_steps=warmup) if warmup else {}
    if s.name == "plateau" or base == 0:
        return float(base)
    sched = keras.optimizers.schedules
    if s.name == "constant":  # a schedule too, not a float: a float LR is a variable a resumed run would restore
        return sched.CosineDecay(**{"initial_learning_rate": base, **warmup_args}, decay_steps=1, alpha=1.0)
    if s.name == "cosine":
        decay = max(1, train_cfg.epochs - s.warmup_epochs) * steps_per_epoch
        return sched.CosineDecay(
            **{"initial_learning_rate": base, **warmup_args}, decay_steps=decay, alpha=s.min_lr / base
        )
    if s.name == "step":
        every = s.step_epochs * steps_per_epoch
        if warmup:
            return WarmupStepDecay(**warmup_args, decay_steps=every, decay_rate=s.gamma)
        return sched.ExponentialDecay(base, decay_steps=every, decay_rate=s.gamma, staircase=True)
    raise ValueError(f"train.schedule.name: got {s.name!r}")


def warmup_start(base: float, warmup_epochs: int) -> float:
    """Where the linear warm-up starts: base/W, the first warm-up epoch's LR when the LR moved once an epoch, so
    its mean over the warm-up is the per-epoch one's (and one warm-up epoch means none)."""
    return base / warmup_epochs if warmup_epochs else base


def warmup_learning_rate(step: int, start: float, base: float, warmup_steps: int) -> float:
    """The linear warm-up's LR at 0-based optimizer `step` < warmup_steps: CosineDecay's ramp from start to base."""
    return start + (base - start) * step / warmup_steps


@keras.saving.register_keras_serializable(package="nfp")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Step decay after a linear warm-up: CosineDecay's warm-up, then ExponentialDecay(staircase=True) from the end
    of the warm-up: warmup_target × decay_rate^⌊(step − warmup_steps) / decay_steps⌋.

    Keras has no built-in for this combination, so it is a small class, registered as `nfp>WarmupStepDecay` the
    way nfp.layers registers the layers; nfp.layers imports this module, so a checkpoint saved with its optimizer
    loads with `keras.saving.load_model(path)` after `import nfp.layers`, as the layers do. Its config is plain
    numbers. The other schedules are Keras's own and load anywhere.
    """

    def __init__(self, initial_learning_rate, warmup_target, warmup_steps, decay_steps, decay_rate, name=None):
        super().__init__()
        if warmup_steps < 1 or decay_steps < 1:
            raise ValueError(f"warmup_steps and decay_steps must be ≥ 1: got {warmup_steps}, {decay_steps}")
        self.initial_learning_rate, self.warmup_target = initial_learning_rate, warmup_target
        self.warmup_steps, self.decay_steps, self.decay_rate = warmup_steps, decay_steps, decay_rate
        self.name = name or "WarmupStepDecay"

    def __call__(self, step):
        step = ops.cast(step, "float32")
        start, target = self.initial_learning_rate, self.warmup_target
        ramp = start + (target - start) * step / self.warmup_steps
        stairs = ops.floor(ops.maximum(step - self.warmup_steps, 0.0) / self.decay_steps)
        decayed = target * ops.power(ops.cast(self.decay_rate, "float32"), stairs)
        return ops.where(step < self.warmup_steps, ramp, decayed)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "name": self.name,
        }


class WarmupThenPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau after a linear warm-up it does itself, per step: before each batch of the first
    `warmup_steps` optimizer steps it sets the LR from `optimizer.iterations` (so a resumed run continues the ramp),
    at the end of the warm-up it sets `base`, and only epochs after the warm-up count towards a plateau.

    The LR is the optimizer's variable, saved with its weights: a run resumed after the warm-up keeps its reductions.
    """

    def __init__(self, base: float, warmup_steps: int, start: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.base, self.warmup_steps = base, warmup_steps
        self.start = base if start is None else start
        self._warming = None  # unknown until the first batch: a backup may restore past the warm-up

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._warming = None if self.warmup_steps else False

    def on_epoch_begin(self, epoch, logs=None):
        self.on_train_batch_begin(0)  # the epoch's first LR in place before anything reads it (EpochStats)

    def on_train_batch_begin(self, batch, logs=None):
        if self._warming is False:
            return
        step = self._step()
        if step < self.warmup_steps:
            self._warming = True
            self.model.optimizer.learning_rate = warmup_learning_rate(step, self.start, self.base, self.warmup_steps)
        elif self._warming:  # the warm-up ended mid-epoch
            self._end_warmup()
        else:  # resumed after the warm-up: the restored LR stands
            self._warming = False

    def on_epoch_end(self, epoch, logs=None):
        if self._warming is not False or self._step() < self.warmup_steps:  # a warm-up epoch: no plateau to judge
            if self._step() >= self.warmup_steps:
                self._end_warmup()  # before the backup saves the LR
            return
        super().on_epoch_end(epoch, logs)

    def _end_warmup(self):
        self.model.optimizer.learning_rate = self.base
        self._warming = False


def plateau_callback(train_cfg, replicas: int, steps_per_epoch: int, monitor: str, mode: str) -> WarmupThenPlateau:
    """train.schedule plateau as one callback: the warm-up over warmup_epochs, then × gamma after `patience`
    epochs without improvement of `monitor` ("min" or "max"), down to min_lr."""
    s = train_cfg.schedule
    base = base_learning_rate(train_cfg, replicas)
    return WarmupThenPlateau(
        base,
        s.warmup_epochs * steps_per_epoch,
        start=warmup_start(base, s.warmup_epochs),
        monitor=monitor,
        mode=mode,
        factor=s.gamma,
        patience=s.patience,
        min_lr=s.min_lr,
    )
