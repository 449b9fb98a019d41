"""The decoding processes of a prepare from your own files: spawned (the parent may hold TensorFlow's threads), at
most one per core, deaf to Ctrl-C (the parent answers it in one line), and ending with their parent."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time


def pool(processes: int):
    """A process pool of `processes` (0: one per core), at most one per core (more would only contend, and each
    holds a decoder's memory: said once), or None for 1: decoding in this process."""
    cores = os.cpu_count() or 1
    n = min(processes or cores, cores)
    if processes > cores:
        print(f"prepare: data.prepare_processes {processes} capped at this machine's {cores} cores", flush=True)
    if n == 1:
        return None
    # spawn: the parent may hold TensorFlow's threads, which fork would copy mid-flight
    return _DecoderPool(
        n, mp_context=multiprocessing.get_context("spawn"), initializer=_decoder_start, initargs=(os.getpid(),)
    )


class _DecoderPool(concurrent.futures.ProcessPoolExecutor):
    """Decoding processes that never see Ctrl-C, not even while they start: each is spawned with SIGINT blocked, a
    mask it keeps across fork and exec until `_decoder_start` ignores the signal (a KeyboardInterrupt mid-import would
    print its traceback). A Ctrl-C meanwhile is the parent's: recorded, then answered once the spawn is done (ignoring
    SIGINT in the parent instead, as before, lost it)."""

    def _spawn_process(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return super()._spawn_process()
        caught = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return super()._spawn_process()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C pending here goes to `caught`
            signal.signal(signal.SIGINT, previous)
            if caught:
                signal.raise_signal(signal.SIGINT)


def _decoder_start(parent: int) -> None:
    """In each decoding process: Ctrl-C is the parent's to answer (one line there, not a traceback from every
    worker: a terminal sends SIGINT to the whole process group), and the process ends with its parent, even one
    killed with SIGKILL (which runs no cleanup): a thread watches for it twice a second."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C pending since the spawn is dropped with it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="nfp-parent-watch", daemon=True).start()
