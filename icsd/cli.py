"""What both entry points share: run a command under the distributed environment, errors shown once."""
from __future__ import annotations

import os
import sys
from typing import Callable

from icsd.distributed import DistEnv, init_distributed, shutdown
from icsd.errors import ICSDError


def run_main(body: Callable[[DistEnv], object], device: str = "auto") -> int:
    """Set up the process group, run ``body(env)``, tear down. A user error (ICSDError) prints one line
    and exits 1: on rank 0 when every rank meets it alike, else on the rank that met it (torchrun then
    stops the others). Any other error propagates with its traceback."""
    env = DistEnv()
    try:
        env = init_distributed(device)
        body(env)
        return 0
    except ICSDError as exc:
        if not exc.all_ranks or env.is_main or int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutdown()
