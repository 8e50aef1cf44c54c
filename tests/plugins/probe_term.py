"""A loss term written outside the package, as a researcher would in a module of their own: the test that
selects it (tests/test_plugins.py) names it in YAML as ``loss.plugins: [probe_term:Probe]``.

It owns a temperature (``tau_probe``) and a head (``probe``): the images' similarities under the head are
distilled towards the (detached) similarities of their captions' backbone features."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from icsd.config import TemperatureConfig, temperature
from icsd.losses import LossTerm, Reads, cosine_similarity_matrix, soft_label_loss


@dataclass
class ProbeConfig:
    weight: float = 0.2
    dim: int = 8  # the head's output size
    temperature: TemperatureConfig = temperature(("tau", "tau_min", "tau_max", "learn_tau"), 0.3, 0.05, 1.0, True)


class Probe(LossTerm):
    section, config, value_name = "probe", ProbeConfig, "loss_probe"

    def reads(self) -> Reads:
        return Reads(("x_img", "x_txt"), ())

    def temperatures(self):
        return {"tau_probe": self.cfg.temperature}

    def heads(self, dim: int, init_std: float):
        return {"probe": nn.Linear(dim, self.cfg.dim)}

    def __call__(self, out, batch, params):
        z = F.normalize(params.head("probe")(out["x_img"].float()), dim=-1)
        teacher = cosine_similarity_matrix(out["x_txt"]).detach()
        kl = soft_label_loss(z @ z.t(), teacher, params.temperature("tau_probe"), z.new_tensor(1.0))
        return {"probe_kl": kl, "loss": kl}
