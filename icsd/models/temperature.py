"""Temperatures of the losses: learnable scalars (or frozen buffers) clamped after every optimizer step."""
from __future__ import annotations

import torch
from torch import nn

from icsd.config import TemperatureConfig


class Temperature(nn.Module):
    """A scalar temperature stored as its value (not its log); a parameter when learnable, else a buffer."""

    def __init__(self, cfg: TemperatureConfig):
        super().__init__()
        self.lo, self.hi = cfg.min, cfg.max
        value = torch.tensor(float(cfg.init))
        if cfg.learnable:
            self.value = nn.Parameter(value)
        else:
            self.register_buffer("value", value)

    def forward(self) -> torch.Tensor:
        return self.value

    @torch.no_grad()
    def clamp_(self) -> None:
        self.value.clamp_(self.lo, self.hi)


class Temperatures(nn.ModuleDict):
    """The loss terms' temperatures by name (``tau``, ``tau_s``, ``tau_t``, ...: ``Criterion.temperatures``), each
    from its ``TemperatureConfig``. Only the temperatures that a term which is on uses exist (a term may use
    another's: CUSA's uni-modal term, the soft label's teacher temperature)."""

    def __init__(self, specs: dict[str, TemperatureConfig]):
        super().__init__({name: Temperature(cfg) for name, cfg in specs.items()})

    def clamp_(self) -> None:
        for temp in self.values():
            temp.clamp_()
