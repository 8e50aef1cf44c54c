"""No process outlives its run, and no exit hangs.

DataLoader workers ignore the stop signals (the main process decides when to stop: ``ignore_stop_signals``).
At interpreter exit, ``multiprocessing`` terminates (SIGTERM) and then joins its children, and a worker that
ignores SIGTERM would make that join wait forever; garbage collection, which would shut the loaders down,
comes too late. So a process that is ending shuts its loaders down itself: every loader of the project is an
``icsd.data.loaders.Loader``, whose iterators are tracked here, and ``shutdown_loaders`` stops their workers
(the way the loader does: told to stop, joined, the pin-memory thread ended). Then ``kill_children`` kills any
child still alive, and ``exit_promptly`` ends the process after a grace period if interpreter exit still
does not return. Torch-free, so the light commands can use it.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import traceback
import weakref
from typing import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
EXIT_GRACE_SECONDS = 20.0  # interpreter exit after main() returned; then the process ends regardless


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM/SIGUSR1 to the main process, which stops
    at a step boundary (a cluster sends SIGTERM to every process of the job)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


def track_iterator(iterator) -> None:
    """Register a DataLoader iterator for ``shutdown_loaders`` (``icsd.data.loaders.Loader`` does)."""
    _LIVE_ITERATORS.add(iterator)


def shutdown_iterator(iterator) -> None:
    # The multi-process iterator's own shutdown (what its __del__ runs): workers are told to stop and
    # joined, their pids leave torch's SIGCHLD watch, the pin-memory thread ends. DataLoader has no public
    # method for it; the one it uses itself is called.
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def shutdown_loaders() -> None:
    """Stop the workers of every live iterator of an ``icsd.data.loaders.Loader`` (idempotent)."""
    for iterator in list(_LIVE_ITERATORS):
        shutdown_iterator(iterator)


def kill_children(timeout: float = 5.0) -> None:
    """SIGKILL every ``multiprocessing`` child still alive (workers ignore SIGTERM) and reap it."""
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not keep the process alive
            pass


def arm_exit_watchdog(code: int, seconds: float = EXIT_GRACE_SECONDS) -> None:
    """End the process with ``code`` if it is still alive ``seconds`` from now (a daemon thread: it runs
    while interpreter exit waits on threads or children, and never delays a process that exits)."""
    def expire() -> None:
        _flush_streams()
        os._exit(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def exit_promptly(main: Callable[[], int]) -> int:
    """Run an entry point's ``main()`` as the program: an unexpected exception prints its traceback and
    gives 1; children still alive are killed; then the process gets ``EXIT_GRACE_SECONDS`` to exit.
    Use it only in ``if __name__ == "__main__"`` (it may end the process)."""
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported here, as the interpreter would, then the process ends
        traceback.print_exc()
        code = 1
    _flush_streams()
    shutdown_loaders()
    kill_children()
    arm_exit_watchdog(code)
    return code
