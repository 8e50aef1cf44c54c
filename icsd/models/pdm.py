"""PDM: subtract a learnable, similarity-weighted mix of the batch from each feature (docs/method.md)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PDM(nn.Module):
    """``u = x/||x||; S = u u^T / t; A = softmax_rows(S) + softmax_cols(S); s = exp(theta);
    y = s*u - s*(A u); out = LayerNorm(y)``. ``theta`` (per dimension) starts at ``log(scale_init)``."""

    def __init__(self, dim: int, scale_init: float = 0.1, temperature: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.temperature = temperature
        self.log_scale = nn.Parameter(torch.full((dim,), math.log(scale_init)))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.normalize(x, dim=-1)
        sim = u @ u.t() / self.temperature
        mix = sim.softmax(dim=1) + sim.softmax(dim=0)
        scale = self.log_scale.exp()
        return self.norm(scale * u - scale * (mix @ u))
