"""Stopping a run cleanly on SIGTERM, SIGINT or SIGUSR1 (docs/training.md: preemptible clusters).

The signal handler only records the signal; the training loop asks ``StopControl.should_stop`` at each
optimizer-step boundary, and every rank takes the same decision (any rank's signal or input failure stops
all ranks at the same step), so the recovery checkpoint is written from a consistent state.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from icsd.distributed import control_group
from icsd.errors import Stopped
from icsd.processes import STOP_SIGNALS


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (143, 130, 138)."""
    return 128 + int(signum)


class Preempted(Stopped):
    """The run stopped on a signal after saving its state; the entry point exits with 128 + the signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message, exit_code(signum))
        self.signum = signum


class StopControl:
    """Records stop signals while installed (a context manager) and lets all ranks agree on stopping."""

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> StopControl:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum: int, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
        self.signum = self.signum or signum

    def should_stop(self, failed: bool = False) -> tuple[int, bool]:
        """(signal to stop on or 0, whether some rank failed), the same on every rank."""
        flags = torch.tensor([self.signum, int(failed)], dtype=torch.int64)
        if dist.is_available() and dist.is_initialized():
            # A tiny CPU all-reduce over gloo: with NCCL it never makes the host wait for the GPU.
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=control_group())
        return int(flags[0]), bool(flags[1])


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
