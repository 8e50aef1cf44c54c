"""What the entry points share: logging set up once, the distributed environment, user errors shown once,
clean stops on signals."""
from __future__ import annotations

import logging
import signal
from typing import Callable

import torch.distributed as dist

from icsd.command import run_command, user_message
from icsd.distributed import DistEnv, init_distributed, shutdown
from icsd.errors import ICSDError, OtherRankFailed
from icsd.logger import env_rank, setup_logging
from icsd.preemption import Preempted, exit_code, install_raising_handlers

logger = logging.getLogger(__name__)


def report_error(exc: ICSDError) -> None:
    """Show a user error as one line: on rank 0 when every rank meets it alike (so it shows once under
    torchrun), else on the rank that met it."""
    if not exc.all_ranks or env_rank() == 0:
        logger.error(f"error: {user_message(exc)}")


def run_cli(body: Callable[[], object]) -> int:
    """Run a single-process command (the preparation tools): ``error: ...`` and exit status 1 on bad input;
    Ctrl-C, SIGTERM or SIGUSR1 stop it with one line (an extraction keeps its rows: rerun to continue)."""
    previous = install_raising_handlers()
    try:
        return run_command(body)
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        logger.error(f"stopped by {signal.Signals(signum).name}: the work done so far is saved; rerun the same "
                     f"command to continue")
        return exit_code(signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_main(body: Callable[[DistEnv], object], device: str = "auto", timeout_minutes: float = 30.0) -> int:
    """Set up the process group, run ``body(env)``, tear down. A user error (ICSDError) is reported and
    exits 1; a stop signal exits 128 + its number after the run saved its state. When another rank failed
    (its error shows on that rank), this one exits 1 quietly instead of adding a traceback of its own. Any
    other error propagates with its traceback."""
    env = None
    try:
        env = init_distributed(device, timeout_minutes)
        setup_logging(env.rank)
        body(env)
        return 0
    except Preempted as exc:
        logger.info(str(exc))
        return exit_code(exc.signum)
    except OtherRankFailed:
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: no waiting for the step to end, nothing saved
        logger.error("interrupted (no recovery checkpoint written)")
        return exit_code(signal.SIGINT)
    except ICSDError as exc:
        report_error(exc)
        return 1
    except dist.DistError:
        if env is None or not env.distributed:
            raise
        logger.info("stopping: another process of this job failed (its error is shown above)")
        return 1
    finally:
        shutdown()
