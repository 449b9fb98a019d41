"""Traced model calls, made once per model and kind: what every family's rollout runs.

On TensorFlow a call becomes a tf.function (XLA-compiled when asked, as nfp.distribute.devices chooses for the machine; XLA
compiles once per input shape); on other backends the plain call.
"""

from __future__ import annotations

import weakref

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

            fn = tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)
        functions[kind, jit_compile] = fn
    return functions[kind, jit_compile]
