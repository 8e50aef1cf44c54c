"""Rank 0's progress through an epoch: a tqdm bar on a terminal; a plain line every ``train.log_every``
steps when stdout is not a terminal (a SLURM log, a file nobody watches live)."""
from __future__ import annotations

import datetime
import logging
import resource
import sys

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far: the device's allocator peak on CUDA, this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux


def format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class Progress:
    """Shows ``update(step, values)`` calls: a bar on a terminal, else a log line per call."""

    def __init__(self, epoch: int, epochs: int, total: int, start: int, enabled: bool):
        self.epoch, self.epochs, self.total = epoch, epochs, total
        self.interactive = enabled and sys.stdout.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch}", disable=not self.interactive,
                        dynamic_ncols=True, leave=False)

    def advance(self) -> None:
        self.bar.update(1)

    def update(self, step: int, values: dict[str, float]) -> None:
        """``values``: running loss means, ``lr``, ``samples_per_second``, ``data_share``, ``memory_gb``,
        ``eta_seconds``."""
        if self.interactive:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                 data=f"{values['data_share']:.0%}")
        elif self.enabled:
            losses = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k.startswith("loss"))
            logger.info(f"epoch {self.epoch}/{self.epochs} step {step}/{self.total} | {losses} | "
                        f"lr {values['lr']:.3e} | {values['samples_per_second']:.1f} samples/s | "
                        f"data {values['data_share']:.0%} | mem {values['memory_gb']:.2f} GB | "
                        f"eta {format_duration(values['eta_seconds'])}")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
