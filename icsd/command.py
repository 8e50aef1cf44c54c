"""How a single-process command runs (report, plot, show, export, ablate, the preparation tools): logging
set up once, a user error shown as one ``error: ...`` line with exit status 1. Torch-free, so the light
commands (report, plot) start fast."""
from __future__ import annotations

import logging
from typing import Callable, Optional

from icsd.errors import ICSDError
from icsd.logger import setup_logging

logger = logging.getLogger(__name__)


def user_message(exc: ICSDError) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries the worker's
    traceback), its last line without the exception's class name."""
    message = str(exc).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def run_command(body: Callable[[], Optional[int]]) -> int:
    """Run ``body``; its return value (None = 0) is the exit status, an ICSDError gives 1."""
    setup_logging(0)
    try:
        code = body()
        return 0 if code is None else code
    except ICSDError as exc:
        logger.error(f"error: {user_message(exc)}")
        return 1
