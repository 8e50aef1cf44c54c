"""One training epoch, one optimizer step at a time: forward, loss terms, backward, optimizer step,
temperature clamping; stopping at a step boundary on a signal or an unreadable image, with the position
to resume from. Read ``train_one_epoch`` top to bottom: it is the whole step."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from icsd.amp import autocast
from icsd.distributed import all_reduce_sum
from icsd.errors import ImageReadError, TrainingError
from icsd.train.progress import Progress, peak_memory_gb
from icsd.train.session import Session


@dataclass
class EpochState:
    """Where an epoch stands. A recovery checkpoint saves it (``as_dict``); a resumed run continues from it
    with the same loss sums, so the epoch's logged means equal an uninterrupted run's."""

    epoch: int
    num_updates: int             # optimizer steps since the start of training
    lr: float                    # at the start of the epoch (what the log reports)
    update: int = 0              # optimizer steps done in this epoch
    names: list = field(default_factory=list)
    sums: list = field(default_factory=list)  # per-term loss sums over this rank's micro-steps so far
    seconds: float = 0.0
    data_seconds: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class EpochStop:
    """The epoch stopped early at an optimizer-step boundary: on a signal, or because a rank could not read
    its next batch (``error`` on that rank)."""

    state: EpochState
    signum: int = 0
    error: Optional[Exception] = None


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def optimizer_step(model: nn.Module, optimizer, scaler, grad_clip: Optional[float]) -> None:
    """Apply the accumulated gradients: optional clipping, the (fp16-scaled) step, zeroed gradients, and
    the temperatures clamped to their ranges."""
    if grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradient, not the fp16 loss-scaled one
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    # Clamp after the step, not in forward: the optimizer may push a temperature out of its range, and
    # clamping the stored value keeps AdamW's state consistent with what is used.
    unwrap(model).clamp_temperatures_()


def _fetch(batches: Iterator, count: int) -> tuple[Optional[list], Optional[ImageReadError]]:
    """The micro-batches of the next optimizer step, or the unreadable-image error met while loading them."""
    try:
        return [next(batches) for _ in range(count)], None
    except ImageReadError as exc:
        return None, exc


class _LossSums:
    """Every loss term summed over the epoch's micro-steps, on the device (reading them every step would make
    the host wait for the GPU); read back only at a log interval or for a checkpoint."""

    def __init__(self, position: EpochState, device: torch.device):
        self.names = list(position.names)
        self.sums = torch.tensor(position.sums, dtype=torch.float32, device=device) if position.sums else None

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float() for v in terms.values()])
        if self.sums is None:
            self.names, self.sums = list(terms), torch.zeros_like(values)
        self.sums += values

    def means(self, micro_steps: int) -> dict[str, float]:
        return dict(zip(self.names, (self.sums / micro_steps).tolist()))

    def as_list(self) -> list[float]:
        return self.sums.tolist() if self.sums is not None else []

    def check_finite(self, epoch: int, step: int) -> None:
        sums = all_reduce_sum(self.sums)  # every rank stops together if any rank went non-finite
        if not bool(torch.isfinite(sums).all()):
            bad = [n for n, v in zip(self.names, sums.tolist()) if not math.isfinite(v)]
            raise TrainingError(f"non-finite loss ({', '.join(bad)}) in epoch {epoch} by step {step}; stopping. "
                                f"The last checkpoint written is intact; try a lower lr, grad_clip or fp32.")


def _speed(session: Session, done: int, left: int, elapsed: float, total_seconds: float, data_seconds: float) -> dict:
    """The progress figures of a log interval: ``done`` steps in ``elapsed`` seconds since this start, ``left``
    to go; the data share over the whole epoch (``total_seconds``, a resumed epoch's earlier part included)."""
    cfg, env = session.cfg.train, session.env
    return {"lr": session.state.optimizer.param_groups[0]["lr"],
            "samples_per_second": done * cfg.accum_steps * cfg.batch_size * env.world_size / max(elapsed, 1e-9),
            "data_share": data_seconds / max(total_seconds, 1e-9), "memory_gb": peak_memory_gb(env.device),
            "eta_seconds": left * elapsed / max(1, done)}


def train_one_epoch(session: Session, position: EpochState) -> dict | EpochStop:
    """Train the optimizer steps ``position.update .. session.updates_per_epoch`` of ``position.epoch``.
    Returns the epoch means of every loss term with timings, or an ``EpochStop``."""
    cfg, env, state, model = session.cfg.train, session.env, session.state, session.model
    accum, steps = cfg.accum_steps, session.updates_per_epoch
    model.train()
    sums = _LossSums(position, env.device)
    seconds, data_seconds, first = position.seconds, position.data_seconds, position.update
    progress = Progress(position.epoch, cfg.epochs, steps, first, enabled=env.is_main)
    batches, start = iter(session.batches), time.perf_counter()

    def where(update: int) -> EpochState:
        return EpochState(position.epoch, state.num_updates, position.lr, update, sums.names, sums.as_list(),
                          seconds + time.perf_counter() - start, data_seconds)

    with progress:
        for update in range(first, steps):
            fetch_start = time.perf_counter()
            micro_batches, error = _fetch(batches, accum)
            data_seconds += time.perf_counter() - fetch_start  # host time blocked waiting for the loader
            # One tiny all-reduce per step: every rank stops at the same step boundary, on any rank's signal
            # or unreadable image, so the recovery checkpoint is written from a consistent state.
            signum, failed = session.control.should_stop(failed=error is not None)
            if signum or failed:
                return EpochStop(where(update), signum, error)
            for micro, batch in enumerate(micro_batches):
                # DDP all-reduces gradients inside backward(); on the micro-steps before an optimizer step
                # that would be wasted communication, so gradients accumulate locally and sync on the last.
                no_sync = env.distributed and micro < accum - 1
                with model.no_sync() if no_sync else contextlib.nullcontext():
                    with autocast(cfg.precision, env.device):
                        out = model(batch["image"], batch["tokens"])
                    # The loss runs outside autocast: its softmaxes over temperature-scaled logits are computed
                    # in fp32 whatever the precision of the encoders.
                    terms = session.loss(out, batch)
                    state.scaler.scale(terms["loss"] / accum).backward()  # / accum: the mean gradient
                sums.add(terms)
            optimizer_step(model, state.optimizer, state.scaler, cfg.grad_clip)
            state.num_updates += 1
            state.scheduler.step_update(state.num_updates)
            progress.advance()
            step = update + 1
            if step % cfg.log_every == 0 or step == steps:
                # The one host sync of the interval; all ranks reduce here, so all stop together on a NaN.
                sums.check_finite(position.epoch, step)
                if env.is_main:  # the progress line and the trackers are rank 0's
                    elapsed = time.perf_counter() - start
                    scalars = {**sums.means(step * accum), **_speed(session, step - first, steps - step, elapsed,
                                                                     seconds + elapsed, data_seconds)}
                    progress.update(step, scalars)
                    session.log_interval(scalars)
            every = cfg.checkpoint_every_steps
            if every and state.num_updates % every == 0 and step < steps:
                session.save_recovery(where(step))  # reads the loss sums back: only when a checkpoint is due
    return _epoch_stats(session, sums, seconds + time.perf_counter() - start, data_seconds)


def _epoch_stats(session: Session, sums: _LossSums, seconds: float, data_seconds: float) -> dict:
    """The epoch's means of every loss term over all ranks' micro-steps, and its speed."""
    cfg, env = session.cfg.train, session.env
    micro_steps = session.updates_per_epoch * cfg.accum_steps
    stats = dict(zip(sums.names, (all_reduce_sum(sums.sums) / (env.world_size * micro_steps)).tolist()))
    stats["seconds_training"] = seconds
    stats["samples_per_second"] = micro_steps * cfg.batch_size * env.world_size / seconds
    stats["data_time_share"] = data_seconds / seconds
    return stats
