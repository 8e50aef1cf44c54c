"""How the distributed entry points (``retrieval.py``, ``evaluation.py``) run: the process group, logging set
up once, user errors shown once, and every exit prompt on every rank."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Callable

import torch.distributed as dist

from icsd.distributed import DistEnv, init_distributed, shutdown
from icsd.errors import ICSDError, OtherRankFailed, Stopped, user_message
from icsd.logger import env_rank, setup_logging
from icsd.processes import kill_children, shutdown_loaders

logger = logging.getLogger(__name__)

# What a collective raises when a peer process has gone (gloo: the connection closes; NCCL: the communicator
# is aborted). DDP's reducer re-raises such errors as plain RuntimeErrors, hence matching on the message.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
             "ProcessGroupNCCL", "remote process exited")


def report_error(exc: ICSDError) -> None:
    """Show a user error as one line: on rank 0 when every rank meets it alike (so it shows once under
    torchrun), else on the rank that met it."""
    if not exc.all_ranks or env_rank() == 0:
        logger.error(f"error: {user_message(exc)}")


def _peer_gone(exc: BaseException) -> bool:
    return isinstance(exc, dist.DistError) or any(text in str(exc) for text in PEER_GONE)


def _shutdown_within(seconds: float) -> None:
    """Destroy the process group, giving up after ``seconds``: after a peer failed, NCCL's teardown can
    wait for the collective that will never complete."""
    worker = threading.Thread(target=shutdown, daemon=True)
    worker.start()
    worker.join(seconds)


def run_main(body: Callable[[DistEnv], object], device: str = "auto", timeout_minutes: float = 30.0) -> int:
    """Set up the process group, run ``body(env)``, tear down; returns the exit status.

    - a user error (ICSDError): reported once, 1; another rank's failure (``OtherRankFailed``, or a
      collective that fails because a peer has gone): 1, quietly, the failed rank reports;
    - a stop on purpose (``Stopped``, e.g. a preemption signal after the recovery checkpoint): its message,
      its exit code; a second Ctrl-C: 130 with one line;
    - any other error propagates with its traceback (``icsd.processes.exit_promptly`` prints it and exits).

    Whatever happens, no child process (DataLoader worker) is left alive and the process group is torn down.
    """
    env = None
    failed = True
    try:
        env = init_distributed(device, timeout_minutes)
        setup_logging(env.rank)
        body(env)
        failed = False
        return 0
    except Stopped as exc:
        logger.info(str(exc))
        return exc.exit_code
    except OtherRankFailed:
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: no waiting for the step to end, nothing saved
        logger.error("interrupted (no recovery checkpoint written)")
        return 128 + signal.SIGINT
    except ICSDError as exc:
        report_error(exc)
        return 1
    except Exception as exc:
        if env is None or not env.distributed or not _peer_gone(exc):
            raise
        logger.info("stopping: another process of this job failed (its error is shown above)")
        return 1
    finally:
        shutdown_loaders()
        kill_children()
        if failed:
            _shutdown_within(10.0)
        else:
            shutdown()
