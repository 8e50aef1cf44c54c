"""ICSD losses as pure functions on tensors (SPEC section 4).

Notation: ``f``, ``g`` are the L2-normalised head outputs of the B images and B texts of a batch,
``L = f g^T`` the image->text logits; ``x_img``/``x_txt`` the backbone's internal features; ``ids`` the
image index of every pair (several captions of one image are all positives).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from icsd.config import LossConfig


@dataclass(frozen=True)
class LossInputs:
    """What ``icsd_loss`` reads under a config, per sample: the model outputs (differentiable) and the
    batch fields (constants). A gathered loss all-gathers exactly these; a new loss term declares its
    inputs here and nothing outside this module needs to know."""

    outputs: tuple[str, ...]
    batch: tuple[str, ...]


def loss_inputs(cfg: LossConfig) -> LossInputs:
    s = cfg.soft_label
    soft = s.weight > 0
    outputs = ("f_img", "f_txt") + (("x_img", "x_txt") if soft and s.alpha > 0 else ())
    batch = ("image_index",) + (("ext_img", "ext_txt") if soft and s.alpha < 1 else ())
    return LossInputs(outputs, batch)


def needs_teacher_features(cfg: LossConfig) -> bool:
    """External teacher features are read only when the soft label uses them (weight > 0 and alpha < 1)."""
    return "ext_img" in loss_inputs(cfg).batch


def multi_positive_targets(ids: torch.Tensor) -> torch.Tensor:
    """``P[i, j] = 1[id_i == id_j] / sum_k 1[id_i == id_k]`` (rows sum to 1)."""
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mode: str) -> torch.Tensor:
    """``mean_i(-sum_j targets[i, j] log softmax_j(logits[i]))``; mode ``mean`` also divides by the columns."""
    loss = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    return loss / logits.shape[1] if mode == "mean" else loss


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor, tau: torch.Tensor, mode: str) -> torch.Tensor:
    """One direction of the multi-positive contrastive loss on ``logits / tau``."""
    return _cross_entropy(logits / tau, targets, mode)


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """``cos(x_i, x_j)`` for every pair of rows, computed in float32."""
    u = F.normalize(x.float(), dim=-1)
    return u @ u.t()


def fuse_similarities(internal: Optional[torch.Tensor], external: Optional[torch.Tensor],
                      alpha: float) -> torch.Tensor:
    """ISF: ``alpha * internal + (1 - alpha) * external``; a part with weight 0 may be None."""
    if alpha == 0.0:
        return external
    if alpha == 1.0:
        return internal
    return alpha * internal + (1.0 - alpha) * external


def soft_label_loss(logits: torch.Tensor, fused: torch.Tensor, tau_s: torch.Tensor, tau_t: torch.Tensor,
                    kind: str = "kl", mode: str = "mean") -> torch.Tensor:
    """One direction: ``Q = softmax_rows(fused / tau_t)``, ``p = softmax_rows(logits / tau_s)``.

    ``kl``: ``(1/B) sum_i KL(Q[i] || p[i])``; ``ce``: ``-sum Q log p`` with the contrastive reductions.
    """
    log_p = (logits / tau_s).log_softmax(dim=1)
    log_q = (fused / tau_t).log_softmax(dim=1)
    if kind == "ce":
        return _cross_entropy(logits / tau_s, log_q.exp(), mode)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()


def icsd_loss(out: dict[str, torch.Tensor], ids: torch.Tensor, cfg: LossConfig,
              ext_img: Optional[torch.Tensor] = None, ext_txt: Optional[torch.Tensor] = None
              ) -> dict[str, torch.Tensor]:
    """All loss terms by name: ``loss`` (the total), ``loss_contrastive``, ``loss_soft`` and per direction.

    ``out`` is the model's forward dict (features and temperatures); ``ext_img``/``ext_txt`` are the
    external teacher features of the pairs (constants), needed when the soft label uses them (alpha < 1).
    """
    c, s = cfg.contrastive, cfg.soft_label
    f, g = out["f_img"].float(), out["f_txt"].float()
    logits = f @ g.t()
    targets = multi_positive_targets(ids)
    terms = {
        "contrastive_i2t": contrastive_loss(logits, targets, out["tau"], c.mode),
        "contrastive_t2i": contrastive_loss(logits.t(), targets.t(), out["tau"], c.mode),
    }
    terms["loss_contrastive"] = c.weight * (terms["contrastive_i2t"] + terms["contrastive_t2i"]) / 2
    if s.weight > 0:
        fused = {}
        for key, x, ext in (("img", out["x_img"], ext_img), ("txt", out["x_txt"], ext_txt)):
            internal = None
            if s.alpha > 0:
                internal = cosine_similarity_matrix(x)
                internal = internal.detach() if s.detach_internal else internal
            external = None
            if s.alpha < 1:
                if ext is None:
                    raise ValueError(f"soft labels with alpha < 1 need the external {key} features")
                external = cosine_similarity_matrix(ext.detach())
            fused[key] = fuse_similarities(internal, external, s.alpha)
        terms["soft_i2t"] = soft_label_loss(logits, fused["img"], out["tau_s_i2t"], out["tau_t"], s.kind, s.mode)
        terms["soft_t2i"] = soft_label_loss(logits.t(), fused["txt"], out["tau_s_t2i"], out["tau_t"], s.kind,
                                            s.mode)
        terms["loss_soft"] = s.weight * (terms["soft_i2t"] + terms["soft_t2i"]) / 2
    else:
        terms["loss_soft"] = logits.new_zeros(())
    terms["loss"] = terms["loss_contrastive"] + terms["loss_soft"]
    return terms
