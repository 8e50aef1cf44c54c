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
from icsd.losses import icsd_loss

def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def gather_for_loss(out: dict, batch: dict, cfg: Config) -> tuple[dict, dict]:
    """All-gather what the loss reads across ranks: head outputs (and internal features when the soft label
    uses them) with gradient; image ids and teacher features as constants."""
    s = cfg.loss.soft_label
    keys = ("f_img", "f_txt") + (("x_img", "x_txt") if s.weight > 0 and s.alpha > 0 else ())
    out = {k: all_gather_with_grad(v) if k in keys else v for k, v in out.items()}
    batch = {k: all_gather_no_grad(v) for k, v in batch.items() if k in ("image_index", "ext_img", "ext_txt")}
    return out, batch


def compute_loss_terms(out: dict, batch: dict, cfg: Config) -> dict[str, torch.Tensor]:
    if cfg.loss.gather_features:
        out, batch = gather_for_loss(out, batch, cfg)
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
            batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
            last_micro = (step + 1) % accum == 0
            no_sync = env.distributed and not last_micro
            with model.no_sync() if no_sync else contextlib.nullcontext():
                with autocast(t.precision, env.device):
                    out = model(batch["image"], batch["tokens"])
                terms = compute_loss_terms(out, batch, cfg)
                scaler.scale(terms["loss"] / accum).backward()
            if last_micro:
                if t.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                unwrap(model).clamp_temperatures_()
                num_updates += 1
                scheduler.step_update(num_updates)
            detached = torch.stack([v.detach().float() for v in terms.values()])
            if sums is None:
                names, sums = list(terms), torch.zeros_like(detached)
            sums += detached
            if (step + 1) % t.log_every == 0 or step + 1 == steps:
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
