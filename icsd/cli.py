"""What both entry points share: run a command under the distributed environment, errors shown once."""
from __future__ import annotations

import os
import sys
from typing import Callable

from icsd.distributed import DistEnv, init_distributed, shutdown
from icsd.errors import ICSDError


def user_message(exc: ICSDError) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries the worker's
    traceback), its last line without the exception's class name."""
    message = str(exc).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def report_error(exc: ICSDError) -> None:
    """Print a user error as one line: on rank 0 when every rank meets it alike (so it shows once under
    torchrun), else on the rank that met it."""
    if not exc.all_ranks or int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {user_message(exc)}", file=sys.stderr, flush=True)


def run_main(body: Callable[[DistEnv], object], device: str = "auto", timeout_minutes: float = 30.0) -> int:
    """Set up the process group, run ``body(env)``, tear down. A user error (ICSDError) is reported and
    exits 1 (torchrun then stops the other ranks); any other error propagates with its traceback."""
    try:
        body(init_distributed(device, timeout_minutes))
        return 0
    except ICSDError as exc:
        report_error(exc)
        return 1
    finally:
        shutdown()
