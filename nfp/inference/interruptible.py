"""Ctrl-C within a fraction of a second while one long TensorFlow call runs.

Python runs a signal handler only between bytecodes of the main thread, and one XLA-compiled rollout of a thousand
frames, or an evaluation's batch, is a single call into C++ that can take minutes. Run in another thread, the main
thread waits on it in short slices, so the KeyboardInterrupt lands at once; the call, which TensorFlow cannot stop,
goes on in its daemon thread until the process ends, and its result is dropped (nothing is written before it)."""

from __future__ import annotations

import threading

WAIT_S = 0.2  # how often the waiting main thread looks up: Ctrl-C is seen within this


def call(function, *args, **kwargs):
    """function(*args, **kwargs), its result or its exception, with Ctrl-C in the main thread raised within WAIT_S."""
    outcome = {}

    def target():
        try:
            outcome["result"] = function(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread, whatever it is
            outcome["error"] = err

    worker = threading.Thread(target=target, name=f"nfp-{getattr(function, '__name__', 'call')}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(WAIT_S)  # a timed wait is interrupted by a signal; an untimed C++ call is not
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
