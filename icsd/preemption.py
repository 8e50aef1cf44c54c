"""Stopping a run cleanly on SIGTERM, SIGINT or SIGUSR1 (SPEC section 5: preemptible clusters).

The signal handler only records the signal; the training loop asks ``StopControl.should_stop`` at each
optimizer-step boundary, and every rank takes the same decision (any rank's signal or input failure stops
all ranks at the same step), so the recovery checkpoint is written from a consistent state.
"""
from __future__ import annotations

import signal
from typing import Optional

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (143, 130, 138)."""
    return 128 + int(signum)


class Preempted(Exception):
    """The run stopped on a signal after saving its state; the entry point exits with ``exit_code``."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopControl:
    """Records stop signals while installed (a context manager) and lets all ranks agree on stopping."""

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}
        self._group = None

    def __enter__(self) -> StopControl:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        if dist.is_available() and dist.is_initialized():
            # The agreement is a tiny CPU all-reduce each step: on a gloo group, so with NCCL it never makes
            # the host wait for the GPU (all ranks create the group here, at the same point).
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
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
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
        return int(flags[0]), bool(flags[1])


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def install_raising_handlers() -> Optional[dict]:
    """For the preparation commands: SIGTERM and SIGUSR1 raise KeyboardInterrupt like Ctrl-C does, so an
    extraction checkpoints its rows and stops (its loop closes the writer on any exception)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signum)
    return {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGUSR1)}
