"""Traced model calls, made once per model and kind: what every family's rollout runs.

On TensorFlow a call becomes a tf.function (XLA-compiled when asked, as nfp.distribute.devices chooses for the machine; XLA
compiles once per input shape); on other backends the plain call.
"""

from __future__ import annotations

import logging
import weakref
from typing import ClassVar

COMPILED = weakref.WeakKeyDictionary()  # model → {(kind, jit): function}: traced once, not per call


def traced(model, kind: str, jit_compile: bool, make):
    """`make()` → a function of the model's inputs (the frames, and for some kinds a Python int), traced once for
    `model` under `kind`."""
    import keras

    functions = COMPILED.setdefault(model, {})
    if (kind, jit_compile) not in functions:
        fn = make()
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            _ExpectedRetracing.install(fn)
            fn = tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)
        functions[kind, jit_compile] = fn
    return functions[kind, jit_compile]


class _ExpectedRetracing(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to <function> triggered tf.function retracing" for the functions
    traced here: each new input shape (batch, context, horizon: a server's requests vary them) traces them once, by
    design. Other functions' retracing warnings, a real sign of waste, pass."""

    functions: ClassVar[set[str]] = set()  # repr() of each traced Python function, as the warning names it

    @classmethod
    def install(cls, function) -> None:
        cls.functions.add(repr(function))
        logger = logging.getLogger("tensorflow")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # a copy: another thread (a server's concurrent requests) may be adding a function meanwhile
        return "triggered tf.function retracing" not in message or not any(f in message for f in tuple(self.functions))
