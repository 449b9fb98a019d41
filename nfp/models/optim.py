"""What training minimises and how: the loss, the optimizer and the learning-rate schedule of `cfg.train`.

The schedule is counted in optimizer steps (`optimizer.iterations`), so a resumed run continues it from the
restored step count with no callback: `train.schedule`'s epochs become steps with `steps_per_epoch`.

- constant: `CosineDecay(alpha=1.0)`, which stays at the base LR after its warm-up, if any. Not a float: the
  optimizer keeps a float LR in a variable that a resumed run restores, so a changed train.learning_rate would not
  apply.
- cosine: `CosineDecay` with its warm-up, from the base LR to `min_lr` at `train.epochs`.
- step: `ExponentialDecay(staircase=True)`, × gamma every `step_epochs`; with warm-up, `WarmupStepDecay`.
- plateau: a float LR (ReduceLROnPlateau must set it) and `plateau_callback`, which warms up itself.
- onecycle: `OneCycle`, PyTorch's OneCycleLR as OpenSTL trains its direct models with it: over train.epochs ×
  steps_per_epoch steps, a cosine from base/25 up to base at 30% of them, then a cosine down to base/2.5e5 at the
  last, held after it. Its warm-up is that first 30%: `warmup_epochs` must stay 0, and `min_lr` does not apply.

Every `warmup_epochs` warm-up is linear, CosineDecay's, over `warmup_epochs` E × `steps_per_epoch` steps: from
base/E at step 0 (the first warm-up epoch's LR when it moved once an epoch, so the mean over the warm-up is
unchanged) to base at its end; the decay is counted from the end of the warm-up.
"""

from __future__ import annotations

import math

import keras
from keras import ops

_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
_LOSSES = {"bce": "BinaryCrossentropy", "mse": "MeanSquaredError"}


def build_optimizer(train_cfg, replicas: int, steps_per_epoch: int):
    """The Keras optimizer of train.optimizer, its learning rate train.schedule per step (see the module docstring)."""
    decay = {} if train_cfg.weight_decay is None else {"weight_decay": train_cfg.weight_decay}
    return getattr(keras.optimizers, _OPTIMIZERS[train_cfg.optimizer])(
        learning_rate=learning_rate_schedule(train_cfg, replicas, steps_per_epoch), **decay
    )


def build_loss(train_cfg, terms: dict[str, float] | None = None):
    """train.loss; with a model family's loss `terms` ({name: weight}, nfp.models.loss_terms), train.loss plus each
    term times its weight."""
    if not terms:
        return getattr(keras.losses, _LOSSES[train_cfg.loss])()
    return LossWithTerms(train_cfg.loss, terms)


def term_metrics(terms: dict[str, float] | None) -> list:
    """One metric per loss term, under the term's name (the epoch logs, the CSV and MLflow show it as
    `differential_divergence` and `val_differential_divergence`): its unweighted mean."""
    from nfp.models import loss_term

    return [keras.metrics.MeanMetricWrapper(loss_term(name), name=name) for name in terms or {}]


@keras.saving.register_keras_serializable(package="nfp")
class LossWithTerms(keras.losses.Loss):
    """train.loss plus a family's weighted loss terms, per clip: Keras averages (batch,) values over the global
    batch (across replicas too), the reduction the base loss alone gets. Its config is plain data; the terms'
    functions come from nfp.models by name."""

    def __init__(self, base: str, terms: dict[str, float], name: str = "loss_with_terms", **kwargs):
        super().__init__(name=name, **kwargs)
        self.base, self.terms = base, dict(terms)
        self._base = getattr(keras.losses, _LOSSES[base])(reduction=None)  # per value, averaged per clip below

    def call(self, y_true, y_pred):
        from nfp.models import loss_term

        clips = ops.shape(y_pred)[0]
        total = ops.mean(ops.reshape(self._base(y_true, y_pred), (clips, -1)), axis=1)  # per clip: all its values alike
        for name, weight in self.terms.items():
            total = total + weight * ops.cast(loss_term(name)(y_true, y_pred), total.dtype)
        return total

    def get_config(self):
        return {"base": self.base, "terms": self.terms, "name": self.name}


def base_learning_rate(train_cfg, replicas: int) -> float:
    """train.learning_rate, times the replica count when train.scale_lr (linear scaling rule)."""
    return train_cfg.learning_rate * (replicas if train_cfg.scale_lr else 1)


def learning_rate_schedule(train_cfg, replicas: int, steps_per_epoch: int):
    """train.schedule as a `keras.optimizers.schedules` schedule of the optimizer step, or a float where a callback
    moves the LR (plateau) or it is 0."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch: got {steps_per_epoch}, expected ≥ 1")
    s = train_cfg.schedule  # onecycle with a warm-up of its own: refused by nfp.config
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
    if s.name == "onecycle":
        return OneCycle(base, total_steps=train_cfg.epochs * steps_per_epoch)
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

    Keras has no built-in for this combination, so it is a small class, registered as `nfp>WarmupStepDecay` when
    this module is imported, the way the families' layers register themselves; nfp.inference.model_source imports it before it
    loads a checkpoint, so one saved with its optimizer loads (elsewhere: `import nfp.models.optim` before
    `keras.saving.load_model(path)`). Its config is plain numbers. OneCycle is registered the same way; the other
    schedules are Keras's own and load anywhere.
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


@keras.saving.register_keras_serializable(package="nfp")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """PyTorch's `OneCycleLR(max_lr, total_steps, pct_start, div_factor, final_div_factor)` with
    anneal_strategy="cos" and three_phase=False, its LR at scheduler step s being this one's at optimizer step s
    (both start at 0 and move once per optimizer step).

    From initial = max/div_factor, a cosine up to max_learning_rate at step pct_start·total_steps − 1, then down to
    initial/final_div_factor at step total_steps − 1, held after it (where PyTorch raises). Each phase, from step a
    at LR u to step b at LR v, is PyTorch's `v + (u − v)/2·(1 + cos(π·(s − a)/(b − a)))`, written
    `v + (u − v)·sin²(π/2·(b − s)/(b − a))`, the same number without float32's cancellation near v.

    Registered as `nfp>OneCycle`, with a config of plain numbers, as WarmupStepDecay.
    """

    def __init__(self, max_learning_rate, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4, name=None):
        super().__init__()
        if total_steps < 1 or not 0 <= pct_start <= 1:
            raise ValueError(f"total_steps must be ≥ 1 and pct_start in [0, 1]: got {total_steps}, {pct_start}")
        self.max_learning_rate, self.total_steps = float(max_learning_rate), int(total_steps)
        self.pct_start, self.div_factor = float(pct_start), float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.name = name or "OneCycle"

    def __call__(self, step):
        top = self.max_learning_rate
        initial = top / self.div_factor
        final = initial / self.final_div_factor
        peak = float(self.pct_start * self.total_steps) - 1  # PyTorch's phase ends, in float64 as it computes them
        last = float(self.total_steps - 1)
        step = ops.minimum(ops.cast(step, "float32"), last)

        def anneal(start_step, end_step, start, end):
            span = (end_step - start_step) or 1.0  # 0 only where PyTorch divides 0 by 0
            return end + (start - end) * ops.square(ops.sin(math.pi / 2 * (end_step - step) / span))

        in_warmup = step <= math.floor(peak)  # = step <= peak at PyTorch's integer steps, in float32 too
        return ops.where(in_warmup, anneal(0.0, peak, initial, top), anneal(peak, last, top, final))

    def get_config(self):
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
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
