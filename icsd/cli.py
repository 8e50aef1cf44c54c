"""What the entry points share: logging set up once, the distributed environment, user errors shown once."""
from __future__ import annotations

import logging
from typing import Callable

from icsd.distributed import DistEnv, init_distributed, shutdown
from icsd.errors import ICSDError
from icsd.logger import env_rank, setup_logging

logger = logging.getLogger(__name__)


def user_message(exc: ICSDError) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries the worker's
    traceback), its last line without the exception's class name."""
    message = str(exc).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def report_error(exc: ICSDError) -> None:
    """Show a user error as one line: on rank 0 when every rank meets it alike (so it shows once under
    torchrun), else on the rank that met it."""
    if not exc.all_ranks or env_rank() == 0:
        logger.error(f"error: {user_message(exc)}")


def run_cli(body: Callable[[], object]) -> int:
    """Run a single-process command (the preparation tools): ``error: ...`` and exit status 1 on bad input."""
    setup_logging(0)
    try:
        body()
        return 0
    except ICSDError as exc:
        report_error(exc)
        return 1


def run_main(body: Callable[[DistEnv], object], device: str = "auto", timeout_minutes: float = 30.0) -> int:
    """Set up the process group, run ``body(env)``, tear down. A user error (ICSDError) is reported and
    exits 1 (torchrun then stops the other ranks); any other error propagates with its traceback."""
    try:
        env = init_distributed(device, timeout_minutes)
        setup_logging(env.rank)
        body(env)
        return 0
    except ICSDError as exc:
        report_error(exc)
        return 1
    finally:
        shutdown()
