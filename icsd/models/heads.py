"""Cross-modal heads: ``PDM -> Linear`` (ICSD), ``LayerNorm -> Linear`` (the baseline), or none (the plain
CLIP fine-tune: its own embeddings)."""
from __future__ import annotations

from torch import nn

from icsd.config import PDMConfig
from icsd.models.pdm import PDM


def build_head(dim: int, pdm: PDMConfig, init_std: float = 0.02, kind: str = "linear") -> nn.Module:
    """Linear weight ~ N(0, init_std), bias 0. The baseline LayerNorm uses torch's default eps. ``kind``
    ``none``: no head (the identity: CLIP's own embedding)."""
    if kind == "none":
        return nn.Identity()
    pre = PDM(dim, pdm.scale_init, pdm.temperature, pdm.eps) if pdm.enabled else nn.LayerNorm(dim)
    linear = nn.Linear(dim, dim)
    nn.init.normal_(linear.weight, std=init_std)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(pre, linear)
