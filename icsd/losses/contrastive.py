"""The contrastive term: multi-positive cross-entropy over the image->text logits and their transpose,
``loss_contrastive = weight * (l_i2t + l_t2i) / 2`` (docs/method.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from icsd.config import TemperatureConfig, option, temperature
from icsd.losses.functions import contrastive_loss, multi_positive_targets
from icsd.losses.term import LossTerm, Reads


@dataclass
class ContrastiveConfig:
    weight: float = option(1.0, "`w_c`; 0 turns the term off")
    mode: Literal["mean", "sum"] = option("mean", "`sum`: standard cross-entropy; `mean` (the reference): also "
                                                  "divided by the batch size")
    temperature: TemperatureConfig = temperature(("tau", "tau_min", "tau_max", "learn_tau"), 0.05, 0.01, 0.10, True,
                                                 "contrastive temperature `tau`, clamped after every step")
    tau_from_model: bool = option(False, "start `tau` at the pretrained model's own `1 / exp(logit_scale)` "
                                         "(within its clamp; OpenAI CLIP: 0.01) instead of `tau`")


class Contrastive(LossTerm):
    section, config, value_name, always_configured = "contrastive", ContrastiveConfig, "loss_contrastive", True

    def reads(self) -> Reads:
        return Reads(("logits",), ("image_index",))

    def temperatures(self):
        return {"tau": self.cfg.temperature}

    def __call__(self, out, batch, params):
        logits = out["logits"]
        targets = multi_positive_targets(batch["image_index"])
        tau = params.temperature("tau")
        i2t = contrastive_loss(logits, targets, tau, self.cfg.mode)
        t2i = contrastive_loss(logits.t(), targets.t(), tau, self.cfg.mode)
        return {"contrastive_i2t": i2t, "contrastive_t2i": t2i, "loss": (i2t + t2i) / 2}
