"""Optimizer and learning-rate schedule through timm's factories."""
from __future__ import annotations

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.optim import Optimizer

from icsd.config import TrainConfig
from icsd.models.pdm import PDM


def lr_group(name: str, pdm_params: set[int], param) -> str:
    """Which learning-rate multiplier a parameter takes: ``backbone``, ``heads``, ``pdm`` or ``temperatures``."""
    if id(param) in pdm_params:
        return "pdm"
    if name.startswith("temperatures."):
        return "temperatures"
    if name.startswith(("image_head.", "text_head.", "loss_heads.")):
        return "heads"
    return "backbone"


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict]:
    """Trainable parameters by (learning-rate group, weight decay): no decay on parameters with ndim <= 1
    (biases, norms, PDM scales, temperatures), as timm does; each group's ``lr_scale`` is its multiplier,
    which timm's schedulers apply to the schedule's value (warm-up and ``min_lr`` included)."""
    o = train.optimizer
    scales = {"backbone": 1.0, "heads": o.head_lr_scale, "pdm": o.pdm_lr_scale, "temperatures": o.temperature_lr_scale}
    pdm_params = {id(p) for m in model.modules() if isinstance(m, PDM) for p in m.parameters()}
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen (locked towers, open_clip's own loss scale): no optimizer state either
        group = lr_group(name, pdm_params, param)
        decay = param.ndim > 1
        entry = groups.setdefault((group, decay), {"params": [], "weight_decay": o.weight_decay if decay else 0.0,
                                                   "lr_scale": scales[group], "group": group})
        entry["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, train: TrainConfig) -> Optimizer:
    """AdamW by default. Without learning-rate multipliers, timm's own two groups (decay, no decay); with them,
    one group per (multiplier, decay) pair."""
    o = train.optimizer
    scaled = (o.head_lr_scale, o.pdm_lr_scale, o.temperature_lr_scale) != (1.0, 1.0, 1.0)
    return create_optimizer_v2(param_groups(model, train) if scaled else model, opt=o.name, lr=o.lr,
                               weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps)


def build_scheduler(optimizer: Optimizer, train: TrainConfig, updates_per_epoch: int):
    """Cosine to ``min_lr`` (optional warm-up). Call ``step_update(num_updates)`` after every optimizer
    step and ``step(epoch)`` after every epoch; timm applies whichever the schedule uses."""
    s = train.scheduler
    scheduler, _ = create_scheduler_v2(optimizer, sched=s.name, num_epochs=train.epochs, min_lr=s.min_lr,
                                       warmup_lr=s.warmup_lr, warmup_epochs=s.warmup_epochs,
                                       step_on_epochs=s.step_on_epochs, updates_per_epoch=updates_per_epoch)
    if any("lr_scale" in group for group in optimizer.param_groups):
        # timm scales a group's rate when it sets it; the first step must not run at the unscaled rate
        scheduler.step(0)
        scheduler.step_update(0)
    return scheduler
