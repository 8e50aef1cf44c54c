"""CUSA's uni-modal soft-label alignment (AAAI'24) as a loss term: each modality gets its own head
``u = Linear(LayerNorm(x))`` on the backbone's features, and the images' (texts') similarities under it are
distilled towards the external teacher's similarities (docs/method.md):

    loss_uni = weight * (KL_rows(softmax(S_ext^I / tau_t) || softmax(u_img u_img^T / tau_u_img))
                         + KL_rows(softmax(S_ext^T / tau_t) || softmax(u_txt u_txt^T / tau_u_txt))) / 2

with batch-mean KL, the diagonal included, ``tau_t`` the soft label's teacher temperature (shared by name),
``tau_u_img`` and ``tau_u_txt`` its own. ``targets: fused`` distills towards the ISF fusion of the internal
and external similarities instead (``alpha``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import nn

from icsd.config import TemperatureConfig, option, temperature
from icsd.errors import ConfigError
from icsd.losses.functions import cosine_similarity_matrix, fuse_similarities, soft_label_loss
from icsd.losses.term import LossTerm, Reads


@dataclass
class UniModalConfig:
    weight: float = option(0.5, "`w_u`; the term is off unless its section is there with a weight above 0")
    targets: Literal["external", "fused"] = option("external", "the teachers' similarities, or their ISF fusion "
                                                               "with the internal ones")
    alpha: float = option(0.3, "`targets: fused`: the internal similarity's weight")
    temperature: TemperatureConfig = temperature(("tau", "tau_min", "tau_max", "learn_tau"), 0.45, 0.10, 1.00, True,
                                                 "its two temperatures `tau_u_img`, `tau_u_txt` (one setting)")


def linear_head(dim: int, init_std: float) -> nn.Sequential:
    """``LayerNorm -> Linear`` (weight ~ N(0, init_std), bias 0)."""
    linear = nn.Linear(dim, dim)
    nn.init.normal_(linear.weight, std=init_std)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.LayerNorm(dim), linear)


class UniModal(LossTerm):
    section, config, value_name = "uni_modal", UniModalConfig, "loss_uni"

    def check(self) -> None:
        if not 0.0 <= self.cfg.alpha <= 1.0:
            raise ConfigError(f"loss.uni_modal.alpha = {self.cfg.alpha!r} must be in [0, 1]")

    def reads(self) -> Reads:
        return Reads(("x_img", "x_txt"), ("ext_img", "ext_txt"))

    def temperatures(self):
        return {"tau_u_img": self.cfg.temperature, "tau_u_txt": self.cfg.temperature}

    def uses(self) -> tuple[str, ...]:
        return ("tau_t",)

    def heads(self, dim: int, init_std: float):
        return {"uni_image": linear_head(dim, init_std), "uni_text": linear_head(dim, init_std)}

    def __call__(self, out, batch, params):
        tau_t, values = params.temperature("tau_t"), {}
        for key, x, ext, name, tau in (("uni_img", out["x_img"], batch["ext_img"], "uni_image", "tau_u_img"),
                                       ("uni_txt", out["x_txt"], batch["ext_txt"], "uni_text", "tau_u_txt")):
            head = params.head(name)
            # in the head's precision (float32), whatever the encoders' under autocast
            u = F.normalize(head(x.to(next(head.parameters()).dtype)), dim=-1)
            target = cosine_similarity_matrix(ext.detach())
            if self.cfg.targets == "fused":
                target = fuse_similarities(cosine_similarity_matrix(x), target, self.cfg.alpha)
            values[key] = soft_label_loss(u @ u.t(), target, params.temperature(tau), tau_t)
        values["loss"] = (values["uni_img"] + values["uni_txt"]) / 2
        return values
