"""Workaround: Keras 3 `model.fit` under MultiWorkerMirroredStrategy (upstream bug, not ours).

keras-team/keras#20585, tensorflow/tensorflow#72388: with several workers, Keras 3's TF trainer
1. in `_maybe_symbolic_build`, reduces the first (x, y) batch across workers with
   `strategy.reduce(...)` → "Attempt to convert a value (PerReplica…)"; any one replica's batch
   has the right shapes for building, so we take the first local result instead;
2. in `reduce_per_replica`, calls `strategy.reduce("MEAN", v, axis=0)` on scalar logs (loss,
   metrics) → "Invalid reduction dimension 0"; scalars need `axis=None`.
Both patches act only on a MultiWorkerMirroredStrategy in multi-worker mode and defer to Keras
otherwise. Tested on the versions in TESTED_KERAS; drop this module once upstream is fixed.
"""

from __future__ import annotations

import logging
import warnings

from nfp.errors import TrainingError

log = logging.getLogger(__name__)

UPSTREAM = "https://github.com/keras-team/keras/issues/20585"
TESTED_KERAS = ("3.15",)  # major.minor versions whose trainer internals this was written against
_applied = False


def apply(strategy) -> bool:
    """Patch Keras's TF trainer for `strategy` if it is multi-worker; return whether the patch is in place."""
    global _applied
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    if _applied:
        return True
    missing = [n for n in ("reduce_per_replica", "_collective_all_reduce_multi_worker") if not hasattr(tf_trainer, n)]
    if missing or not hasattr(tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build"):
        raise TrainingError(
            f"keras {keras.__version__}: trainer internals changed ({', '.join(missing) or '_maybe_symbolic_build'} missing); "
            f"the multi-worker workaround for {UPSTREAM} was tested on keras {', '.join(TESTED_KERAS)}.x"
        )
    if ".".join(keras.__version__.split(".")[:2]) not in TESTED_KERAS:
        message = (
            f"keras {keras.__version__} is untested with nfp's multi-worker workaround ({UPSTREAM}); "
            f"tested: {', '.join(TESTED_KERAS)}.x — check that workers' losses and weights agree"
        )
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica
    is_multi_worker = tf_trainer._collective_all_reduce_multi_worker

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not is_multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tf.nest.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
                ),
                batch,
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not is_multi_worker(strategy):
            return original_reduce(values, strategy, reduction)

        def _mean(v):
            rank = strategy.experimental_local_results(v)[0].shape.rank
            return strategy.reduce("MEAN", v, axis=0 if rank else None)

        return tf.nest.map_structure(_mean, values)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _applied = True
    log.info("applied the Keras multi-worker fit workaround (%s)", UPSTREAM)
    return True
