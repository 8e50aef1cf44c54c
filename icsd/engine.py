"""One training epoch: forward, (gathered) loss terms, backward, optimizer step, temperature clamping."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from icsd.amp import autocast
from icsd.config import Config
from icsd.distributed import DistEnv, all_gather_no_grad, all_gather_with_grad, all_reduce_sum
from icsd.errors import TrainingError
from icsd.losses import LossInputs, icsd_loss, loss_inputs


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


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer, scheduler, scaler, cfg: Config, env: DistEnv,
                    epoch: int, num_updates: int, updates_per_epoch: int) -> tuple[dict, int]:
    """Train ``updates_per_epoch`` optimizer steps. Returns (epoch means of every loss term, num_updates).

    Loss terms are summed on the device and synchronised only every ``train.log_every`` steps (progress
    bar and non-finite check), never with a per-step ``.item()``.
    """
    model.train()
    t = cfg.train
    accum, steps = t.accum_steps, updates_per_epoch * t.accum_steps
    sums: Optional[torch.Tensor] = None
    names: list[str] = []
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not env.is_main, dynamic_ncols=True, leave=False)
    with bar:
        for step, batch in zip(range(steps), loader):
            # non_blocking: with pinned host memory the copy overlaps the previous step's GPU work.
            batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
            last_micro = (step + 1) % accum == 0
            # DDP all-reduces gradients inside backward(); on the micro-steps before an optimizer step that
            # would be wasted communication, so gradients accumulate locally and sync on the last one.
            no_sync = env.distributed and not last_micro
            with model.no_sync() if no_sync else contextlib.nullcontext():
                with autocast(t.precision, env.device):
                    out = model(batch["image"], batch["tokens"])
                # The loss runs outside autocast: its softmaxes over temperature-scaled logits are computed
                # in fp32 (icsd_loss casts the features), whatever the precision of the encoders.
                terms = compute_loss_terms(out, batch, cfg)
                scaler.scale(terms["loss"] / accum).backward()  # / accum: the update sees the mean gradient
            if last_micro:
                if t.grad_clip is not None:
                    scaler.unscale_(optimizer)  # clip the true gradient, not the fp16 loss-scaled one
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                # Clamp after the step, not in forward: the optimizer may push a temperature out of its
                # range, and clamping the stored value keeps AdamW's state consistent with what is used.
                unwrap(model).clamp_temperatures_()
                num_updates += 1
                scheduler.step_update(num_updates)
            # Loss terms accumulate on the device: reading them (.item()) every step would make the host
            # wait for the GPU and drain the queue of launched kernels.
            detached = torch.stack([v.detach().float() for v in terms.values()])
            if sums is None:
                names, sums = list(terms), torch.zeros_like(detached)
            sums += detached
            if (step + 1) % t.log_every == 0 or step + 1 == steps:
                # The one host sync of the interval; all ranks reduce here, so all stop together on a NaN.
                _check_finite(sums, names, epoch, step + 1)
                bar.set_postfix(loss=f"{sums[names.index('loss')].item() / (step + 1):.4f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            bar.update(1)
    seconds = time.perf_counter() - start
    means = (all_reduce_sum(sums) / (env.world_size * steps)).tolist()
    stats = dict(zip(names, means))
    stats["seconds_training"] = seconds
    stats["samples_per_second"] = steps * t.batch_size * env.world_size / seconds
    return stats, num_updates
