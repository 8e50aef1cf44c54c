"""One training epoch: forward, (gathered) loss terms, backward, optimizer step, temperature clamping;
stopping at a step boundary on a signal or an unreadable image, with the position to resume from."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from icsd.amp import autocast
from icsd.config import Config
from icsd.distributed import DistEnv, all_gather_no_grad, all_gather_with_grad, all_reduce_sum
from icsd.errors import ImageReadError, TrainingError
from icsd.losses import LossInputs, icsd_loss, loss_inputs
from icsd.train.preemption import StopControl
from icsd.train.progress import Progress, peak_memory_gb


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def gather_for_loss(out: dict, batch: dict, inputs: LossInputs) -> tuple[dict, dict]:
    """All-gather what the loss reads (``inputs``, declared by ``icsd.losses``) across ranks: model outputs
    with gradient, batch fields as constants. Everything else (the temperatures) stays as it is."""
    # Every rank computes the same global-batch loss. The gather's backward sums the gradient over the
    # ranks (x world size) and DDP's all-reduce averages it (/ world size): together exactly the gradient
    # one process would get on the global batch, so the loss is not rescaled here.
    out = {k: all_gather_with_grad(v) if k in inputs.outputs else v for k, v in out.items()}
    batch = {k: all_gather_no_grad(batch[k]) for k in inputs.batch}
    return out, batch


def compute_loss_terms(out: dict, batch: dict, cfg: Config) -> dict[str, torch.Tensor]:
    if cfg.loss.gather_features:
        out, batch = gather_for_loss(out, batch, loss_inputs(cfg.loss))
    return icsd_loss(out, batch["image_index"], cfg.loss, batch.get("ext_img"), batch.get("ext_txt"))


def _check_finite(sums: torch.Tensor, names: list[str], epoch: int, step: int) -> None:
    sums = all_reduce_sum(sums)  # every rank stops together if any rank went non-finite
    if not bool(torch.isfinite(sums).all()):
        bad = [n for n, v in zip(names, sums.tolist()) if not math.isfinite(v)]
        raise TrainingError(f"non-finite loss ({', '.join(bad)}) in epoch {epoch} by step {step}; stopping. "
                            f"The last checkpoint written is intact; try a lower lr, grad_clip or fp32.")


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


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer, scheduler, scaler, cfg: Config, env: DistEnv,
                    state: EpochState, updates_per_epoch: int, control: StopControl,
                    save_recovery: Optional[Callable[[EpochState], None]] = None,
                    on_log: Optional[Callable[[dict, int], None]] = None) -> dict | EpochStop:
    """Train the optimizer steps ``state.update .. updates_per_epoch`` of the epoch (``loader`` yields the
    remaining batches on the device, images normalised: ``icsd.data.pixels.DeviceBatches``). Returns the
    epoch means of every loss term with timings, or an ``EpochStop``.

    Loss terms are summed on the device and synchronised only every ``train.log_every`` steps (progress
    line, trackers, non-finite check), never with a per-step ``.item()``. ``save_recovery(state)`` runs every
    ``train.checkpoint_every_steps`` optimizer steps; ``on_log(scalars, step)`` at each log interval.
    """
    model.train()
    t = cfg.train
    accum = t.accum_steps
    names = list(state.names)
    sums = torch.tensor(state.sums, dtype=torch.float32, device=env.device) if state.sums else None
    seconds, data_seconds, done_before = state.seconds, state.data_seconds, state.update
    batches = iter(loader)
    progress = Progress(state.epoch, t.epochs, updates_per_epoch, state.update, enabled=env.is_main)
    start = time.perf_counter()

    def snapshot(update: int) -> EpochState:
        now = time.perf_counter()
        return EpochState(state.epoch, num_updates, state.lr, update, names,
                          sums.tolist() if sums is not None else [], seconds + now - start, data_seconds)

    num_updates = state.num_updates
    try:
        for update in range(state.update, updates_per_epoch):
            fetch_start = time.perf_counter()
            micro_batches, error = _fetch(batches, accum)
            data_seconds += time.perf_counter() - fetch_start  # host time blocked waiting for the loader
            # One tiny all-reduce per step: every rank stops at the same step boundary, on any rank's signal
            # or unreadable image, so the recovery checkpoint is written from a consistent state.
            signum, failed = control.should_stop(failed=error is not None)
            if signum or failed:
                return EpochStop(snapshot(update), signum, error)
            for micro, batch in enumerate(micro_batches):
                # DDP all-reduces gradients inside backward(); on the micro-steps before an optimizer step
                # that would be wasted communication, so gradients accumulate locally and sync on the last.
                no_sync = env.distributed and micro < accum - 1
                with model.no_sync() if no_sync else contextlib.nullcontext():
                    with autocast(t.precision, env.device):
                        out = model(batch["image"], batch["tokens"])
                    # The loss runs outside autocast: its softmaxes over temperature-scaled logits are computed
                    # in fp32 (icsd_loss casts the features), whatever the precision of the encoders.
                    terms = compute_loss_terms(out, batch, cfg)
                    scaler.scale(terms["loss"] / accum).backward()  # / accum: the update sees the mean gradient
                # Loss terms accumulate on the device: reading them (.item()) every step would make the host
                # wait for the GPU and drain the queue of launched kernels.
                detached = torch.stack([v.detach().float() for v in terms.values()])
                if sums is None:
                    names, sums = list(terms), torch.zeros_like(detached)
                sums += detached
            optimizer_step(model, optimizer, scaler, t.grad_clip)
            num_updates += 1
            scheduler.step_update(num_updates)
            progress.advance()
            step = update + 1
            if step % t.log_every == 0 or step == updates_per_epoch:
                # The one host sync of the interval; all ranks reduce here, so all stop together on a NaN.
                _check_finite(sums, names, state.epoch, step)
                if env.is_main:  # the progress line and the trackers are rank 0's
                    elapsed = seconds + time.perf_counter() - start
                    scalars = _interval_scalars(sums, names, step * accum, optimizer, elapsed, data_seconds,
                                                (step - done_before) * accum * t.batch_size * env.world_size,
                                                time.perf_counter() - start, env)
                    scalars["eta_seconds"] = (updates_per_epoch - step) * (time.perf_counter() - start) / max(
                        1, step - done_before)
                    progress.update(step, scalars)
                    if on_log is not None:
                        on_log(scalars, num_updates)
            every = t.checkpoint_every_steps
            if save_recovery is not None and every and num_updates % every == 0 and step < updates_per_epoch:
                save_recovery(snapshot(step))  # the snapshot reads the loss sums back: only when saving
    finally:
        progress.close()
    seconds += time.perf_counter() - start
    micro_steps = updates_per_epoch * accum
    means = (all_reduce_sum(sums) / (env.world_size * micro_steps)).tolist()
    stats = dict(zip(names, means))
    stats["seconds_training"] = seconds
    stats["samples_per_second"] = micro_steps * t.batch_size * env.world_size / seconds
    stats["data_time_share"] = data_seconds / seconds
    stats["num_updates"] = num_updates
    return stats


def _interval_scalars(sums: torch.Tensor, names: list[str], micro_steps: int, optimizer, elapsed: float,
                      data_seconds: float, samples: int, interval_seconds: float, env: DistEnv) -> dict:
    """This rank's running means of the loss terms and the speed figures the progress line and trackers show."""
    values = dict(zip(names, (sums / micro_steps).tolist()))
    values["lr"] = optimizer.param_groups[0]["lr"]
    values["samples_per_second"] = samples / max(interval_seconds, 1e-9)
    values["data_share"] = data_seconds / max(elapsed, 1e-9)
    values["memory_gb"] = peak_memory_gb(env.device)
    return values
