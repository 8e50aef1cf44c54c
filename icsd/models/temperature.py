"""Temperatures of the losses: learnable scalars (or frozen buffers) clamped after every optimizer step."""
from __future__ import annotations

import torch
from torch import nn

from icsd.config import LossConfig, TemperatureConfig


class Temperature(nn.Module):
    """A scalar temperature stored as its value; a parameter when learnable, else a buffer.

    Built from its ``TemperatureConfig``; ``active=False`` (its loss term is off) freezes it whatever the
    config says."""

    def __init__(self, cfg: TemperatureConfig, active: bool = True):
        super().__init__()
        self.lo, self.hi = cfg.min, cfg.max
        value = torch.tensor(float(cfg.init))
        if cfg.learnable and active:
            self.value = nn.Parameter(value)
        else:
            self.register_buffer("value", value)

    def forward(self) -> torch.Tensor:
        return self.value

    @torch.no_grad()
    def clamp_(self) -> None:
        self.value.clamp_(self.lo, self.hi)


class Temperatures(nn.ModuleDict):
    """``tau`` (contrastive), ``tau_s`` or ``tau_s_i2t``/``tau_s_t2i`` (student), ``tau_t`` (teacher).

    A temperature whose loss term is off (weight 0) is frozen, so DDP never sees an unused parameter.
    """

    def __init__(self, loss: LossConfig):
        c, s = loss.contrastive, loss.soft_label
        soft_on = s.weight > 0
        temps = {"tau": Temperature(c.temperature, active=c.weight > 0)}
        for name in ["tau_s"] if s.shared_tau else ["tau_s_i2t", "tau_s_t2i"]:
            temps[name] = Temperature(s.student, active=soft_on)
        temps["tau_t"] = Temperature(s.teacher, active=soft_on)
        super().__init__(temps)

    def current(self) -> dict[str, torch.Tensor]:
        """Every temperature by name, plus ``tau_s_i2t``/``tau_s_t2i`` aliases when shared."""
        out = {name: temp() for name, temp in self.items()}
        if "tau_s" in out:
            out["tau_s_i2t"] = out["tau_s_t2i"] = out["tau_s"]
        return out

    def clamp_(self) -> None:
        for temp in self.values():
            temp.clamp_()
