"""The configured loss: the terms of ``loss:``, what they read (gathered across ranks with
``loss.gather_features``), the parameters they need, and the weighted total."""
from __future__ import annotations

import torch
from torch import nn

from icsd.config import LossConfig, TemperatureConfig
from icsd.distributed import all_gather_no_grad, all_gather_with_grad
from icsd.errors import ConfigError
from icsd.losses.term import DERIVED_OUTPUTS, LossTerm, Parameters, Reads, term_classes


class Criterion:
    """``criterion(out, batch, params)`` -> every term's named values, its weighted ``loss_*`` value and the
    total ``loss``. A term that is off (weight 0) computes nothing and reports its ``loss_*`` as 0."""

    def __init__(self, cfg: LossConfig):
        self.gather = cfg.gather_features
        classes = term_classes(cfg.plugins)
        self.terms: list[LossTerm] = [classes[name](section) for name, section in cfg.terms.items()]
        self.active = [term for term in self.terms if term.on]
        for term in self.terms:
            term.check()

    def reads(self) -> Reads:
        reads = Reads()
        for term in self.active:
            reads = reads | term.reads()
        return reads

    def temperatures(self) -> dict[str, TemperatureConfig]:
        """The temperatures of the active terms, by name; one a term ``uses`` comes from the term that owns it
        (from its config when that term is off)."""
        specs: dict[str, TemperatureConfig] = {}
        for term in self.active:
            specs.update(term.temperatures())
        for term in self.active:
            for name in term.uses():
                if name not in specs:
                    owner = next((t for t in self.terms if name in t.temperatures()), None)
                    if owner is None:
                        raise ConfigError(f"loss.{term.section} uses the temperature '{name}', which no configured "
                                          f"loss term defines")
                    specs[name] = owner.temperatures()[name]
        return specs

    def heads(self, dim: int, init_std: float) -> dict[str, nn.Module]:
        heads: dict[str, nn.Module] = {}
        for term in self.active:
            heads.update(term.heads(dim, init_std))
        return heads

    def __call__(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                 params: Parameters) -> dict[str, torch.Tensor]:
        reads = self.reads()
        needed = {name for key in reads.outputs for name in DERIVED_OUTPUTS.get(key, (key,))}
        if self.gather:
            # Every rank computes the same global-batch loss. The gather's backward sums the gradient over the
            # ranks (x world size) and DDP's all-reduce averages it (/ world size): together exactly the
            # gradient one process would get on the global batch, so the loss is not rescaled here.
            out = {k: all_gather_with_grad(v) if k in needed else v for k, v in out.items()}
            batch = {k: all_gather_no_grad(batch[k]) for k in reads.batch}
        if "logits" in reads.outputs:
            # float32 whatever the encoders' precision: the softmaxes over temperature-scaled logits need it
            out = {**out, "logits": out["f_img"].float() @ out["f_txt"].float().t()}
        values: dict[str, torch.Tensor] = {}
        total = None
        for term in self.terms:
            if not term.on:
                values[term.value_name] = out["f_img"].new_zeros((), dtype=torch.float32)
                continue
            parts = dict(term(out, batch, params))
            weighted = term.weight * parts.pop("loss")
            values.update(parts)
            values[term.value_name] = weighted
            total = weighted if total is None else total + weighted
        values["loss"] = total if total is not None else out["f_img"].new_zeros((), dtype=torch.float32)
        return values


def needs_teacher_features(cfg: LossConfig) -> bool:
    """External teacher features are read only when an active term reads them."""
    return bool({"ext_img", "ext_txt"} & set(Criterion(cfg).reads().batch))
