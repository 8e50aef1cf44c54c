"""How a single-process tool runs (report, plot, show, export, ablate, the preparation commands): logging
set up once, a user error shown as one ``error: ...`` line with exit status 1; the preparation commands also
stop on SIGTERM/SIGUSR1 like on Ctrl-C. Torch-free, so the light commands (report, plot) start fast."""
from __future__ import annotations

import logging
import signal
from typing import Callable, Optional

from icsd.errors import ICSDError, user_message
from icsd.logger import setup_logging

logger = logging.getLogger(__name__)


def run_command(body: Callable[[], Optional[int]]) -> int:
    """Run ``body``; its return value (None = 0) is the exit status, an ICSDError gives 1."""
    setup_logging(0)
    try:
        code = body()
        return 0 if code is None else code
    except ICSDError as exc:
        logger.error(f"error: {user_message(exc)}")
        return 1


def run_interruptible(body: Callable[[], object]) -> int:
    """``run_command`` for the preparation commands: Ctrl-C, SIGTERM or SIGUSR1 stop them with one line (an
    extraction keeps its rows, its loop closing the writer on any exception: rerun to continue)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return run_command(body)
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        logger.error(f"stopped by {signal.Signals(signum).name}: the work done so far is saved; rerun the same "
                     f"command to continue")
        return 128 + int(signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
