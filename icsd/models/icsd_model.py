"""The ICSD dual encoder. ``forward`` returns features; the losses (icsd.losses) find the parameters of their
terms (temperatures, heads) here by name."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from icsd.config import Config
from icsd.losses import Criterion
from icsd.models.backbone import Backbone, build_backbone
from icsd.models.heads import build_head
from icsd.models.temperature import Temperatures

# open_clip's own loss parameters: ICSD uses its temperatures instead, so they are frozen (a trainable
# parameter without gradient would break DDP and waste optimizer state).
OPEN_CLIP_LOSS_PARAMETERS = ("logit_scale", "logit_bias")


class ICSDModel(nn.Module):
    """open_clip backbone -> internal features ``x`` -> head (PDM -> Linear, or none) -> L2-normalised ``f``/``g``."""

    def __init__(self, clip: nn.Module, embed_dim: int, cfg: Config):
        super().__init__()
        self.clip = clip
        for name, param in clip.named_parameters():
            if name in OPEN_CLIP_LOSS_PARAMETERS:
                param.requires_grad_(False)
        m = cfg.model
        self.image_head = build_head(embed_dim, m.pdm, m.head_init_std, m.heads)
        self.text_head = build_head(embed_dim, m.pdm, m.head_init_std, m.heads)
        # The loss terms' parameters (icsd.losses): created for the terms that are on, found by name.
        criterion = Criterion(cfg.loss)
        self.temperatures = Temperatures(criterion.temperatures())
        self.loss_heads = nn.ModuleDict(criterion.heads(embed_dim, cfg.model.head_init_std))
        if "tau" in self.temperatures and cfg.loss.contrastive.tau_from_model:
            self._tau_from_logit_scale(clip)
        if m.lock_image:
            clip.lock_image_tower(unlocked_groups=m.lock_image_unlocked_groups)
        if m.lock_text:
            clip.lock_text_tower(unlocked_layers=m.lock_text_unlocked_layers)

    @torch.no_grad()
    def _tau_from_logit_scale(self, clip: nn.Module) -> None:
        """The contrastive temperature starts at the backbone's own: 1 / exp(logit_scale), within its clamp
        (OpenAI CLIP's scale is 100: tau = 0.01, the lower clamp, as open_clip clamps the scale at 100)."""
        tau = self.temperatures["tau"]
        tau.value.fill_(float(1.0 / clip.logit_scale.float().exp()))
        tau.clamp_()

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(internal feature ``x_img``, normalised head output ``f``) for a batch of images."""
        x = self.clip.encode_image(images)
        return x, F.normalize(self.image_head(x).float(), dim=-1)  # normalised in fp32 under autocast too

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.clip.encode_text(tokens)
        return x, F.normalize(self.text_head(x).float(), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        x_img, f_img = self.encode_image(images)
        x_txt, f_txt = self.encode_text(tokens)
        return {"x_img": x_img, "x_txt": x_txt, "f_img": f_img, "f_txt": f_txt}

    def temperature(self, name: str) -> torch.Tensor:
        return self.temperatures[name]()

    def head(self, name: str) -> nn.Module:
        return self.loss_heads[name]

    def clamp_temperatures_(self) -> None:
        self.temperatures.clamp_()


def build_model(cfg: Config, weights_follow: bool = False) -> tuple[ICSDModel, Backbone]:
    """The configured model; ``weights_follow``: trained weights are loaded into it next."""
    backbone = build_backbone(cfg.model, weights_follow)
    if cfg.train.grad_checkpointing:
        backbone.clip.set_grad_checkpointing(True)
    return ICSDModel(backbone.clip, backbone.embed_dim, cfg), backbone
