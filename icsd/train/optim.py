"""Optimizer and learning-rate schedule through timm's factories."""
from __future__ import annotations

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.optim import Optimizer

from icsd.config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig) -> Optimizer:
    """AdamW by default. timm puts every parameter with ndim <= 1 (biases, norms, PDM scales,
    temperatures) in a group without weight decay."""
    o = train.optimizer
    return create_optimizer_v2(model, opt=o.name, lr=o.lr, weight_decay=o.weight_decay,
                               betas=tuple(o.betas), eps=o.eps)


def build_scheduler(optimizer: Optimizer, train: TrainConfig, updates_per_epoch: int):
    """Cosine to ``min_lr`` (optional warm-up). Call ``step_update(num_updates)`` after every optimizer
    step and ``step(epoch)`` after every epoch; timm applies whichever the schedule uses."""
    s = train.scheduler
    scheduler, _ = create_scheduler_v2(optimizer, sched=s.name, num_epochs=train.epochs, min_lr=s.min_lr,
                                       warmup_lr=s.warmup_lr, warmup_epochs=s.warmup_epochs,
                                       step_on_epochs=s.step_on_epochs, updates_per_epoch=updates_per_epoch)
    return scheduler
