"""The soft-label term with ISF: the image->text logits distilled towards the fused intra-modal similarity
of the images (and text->image towards the texts'), ``F = alpha * S_int + (1 - alpha) * S_ext``,
``loss_soft = weight * (kl_i2t + kl_t2i) / 2`` (docs/method.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from icsd.config import TemperatureConfig, option, temperature
from icsd.errors import ConfigError
from icsd.losses.functions import cosine_similarity_matrix, fuse_similarities, soft_label_loss
from icsd.losses.term import LossTerm, Reads


@dataclass
class SoftLabelConfig:
    weight: float = option(0.15, "`w_s`; 0 turns the soft label (and the teachers' features) off")
    kind: Literal["kl", "ce"] = option("kl", "`kl` or `ce` (`-sum Q log p`)")
    mode: Literal["mean", "sum"] = option("mean", "reduction of `kind: ce`, as the contrastive modes")
    alpha: float = option(0.3, "ISF: weight of the internal similarity; 0: external only, 1: internal only")
    detach_internal: bool = option(False, "`true`: the internal similarity is a constant target")
    student: TemperatureConfig = temperature(("tau", "tau_min", "tau_max", "learn_tau"), 0.45, 0.10, 0.99, True,
                                             "student temperature `tau_s`")
    shared_tau: bool = option(True, "one student temperature for both directions; `false`: `tau_s_i2t`, "
                                    "`tau_s_t2i`")
    teacher: TemperatureConfig = temperature(("teacher_tau", "teacher_tau_min", "teacher_tau_max",
                                              "learn_teacher_tau"), 1.0, 0.10, 1.00, False,
                                             "teacher temperature `tau_t` (frozen by default)")


class SoftLabel(LossTerm):
    section, config, value_name, always_configured = "soft_label", SoftLabelConfig, "loss_soft", True

    def check(self) -> None:
        if not 0.0 <= self.cfg.alpha <= 1.0:
            raise ConfigError(f"loss.soft_label.alpha = {self.cfg.alpha!r} must be in [0, 1]")

    def reads(self) -> Reads:
        alpha = self.cfg.alpha
        return Reads(("logits",) + (("x_img", "x_txt") if alpha > 0 else ()),
                     ("ext_img", "ext_txt") if alpha < 1 else ())

    def student_names(self) -> tuple[str, str]:
        return ("tau_s", "tau_s") if self.cfg.shared_tau else ("tau_s_i2t", "tau_s_t2i")

    def temperatures(self):
        return {**{name: self.cfg.student for name in self.student_names()}, "tau_t": self.cfg.teacher}

    def targets(self, out, batch) -> tuple:
        """The fused image-image and text-text similarities (ISF)."""
        fused = []
        for x, ext in ((out.get("x_img"), batch.get("ext_img")), (out.get("x_txt"), batch.get("ext_txt"))):
            internal = None
            if self.cfg.alpha > 0:
                internal = cosine_similarity_matrix(x)
                internal = internal.detach() if self.cfg.detach_internal else internal
            external = cosine_similarity_matrix(ext.detach()) if self.cfg.alpha < 1 else None
            fused.append(fuse_similarities(internal, external, self.cfg.alpha))
        return tuple(fused)

    def __call__(self, out, batch, params):
        logits = out["logits"]
        fused_img, fused_txt = self.targets(out, batch)
        tau_i2t, tau_t2i = (params.temperature(name) for name in self.student_names())
        tau_t, c = params.temperature("tau_t"), self.cfg
        i2t = soft_label_loss(logits, fused_img, tau_i2t, tau_t, c.kind, c.mode)
        t2i = soft_label_loss(logits.t(), fused_txt, tau_t2i, tau_t, c.kind, c.mode)
        return {"soft_i2t": i2t, "soft_t2i": t2i, "loss": (i2t + t2i) / 2}
