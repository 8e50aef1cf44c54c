"""What both entry points share: run a command under the distributed environment, errors shown once."""
from __future__ import annotations

import os
import sys
from typing import Callable

from icsd.distributed import DistEnv, init_distributed, shutdown
from icsd.errors import ICSDError


def run_main(body: Callable[[DistEnv], object], device: str = "auto") -> int:
    """Set up the process group, run ``body(env)``, tear down. A user error (ICSDError) prints one line,
    on rank 0 only since every rank meets it alike, and exits 1; any other error propagates, and
    torchrun stops the other ranks."""
    env = DistEnv()
    try:
        env = init_distributed(device)
        body(env)
        return 0
    except ICSDError as exc:
        if env.is_main or int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutdown()
