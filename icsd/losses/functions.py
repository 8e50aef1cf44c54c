"""The loss math as pure functions on tensors (the formulas of docs/method.md, each tested against a loop
written from the formula in tests/test_losses.py).

Notation: ``f``, ``g`` are the L2-normalised head outputs of the B images and B texts of a batch,
``L = f g^T`` the image->text logits; ``x_img``/``x_txt`` the backbone's internal features; ``ids`` the
image index of every pair (several captions of one image are all positives).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def multi_positive_targets(ids: torch.Tensor) -> torch.Tensor:
    """``P[i, j] = 1[id_i == id_j] / sum_k 1[id_i == id_k]`` (rows sum to 1)."""
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mode: str) -> torch.Tensor:
    """``mean_i(-sum_j targets[i, j] log softmax_j(logits[i]))``; mode ``mean`` also divides by the columns."""
    loss = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    return loss / logits.shape[1] if mode == "mean" else loss


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor, tau: torch.Tensor, mode: str) -> torch.Tensor:
    """One direction of the multi-positive contrastive loss on ``logits / tau``."""
    return cross_entropy(logits / tau, targets, mode)


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


def soft_label_loss(logits: torch.Tensor, teacher: torch.Tensor, tau_s: torch.Tensor, tau_t: torch.Tensor,
                    kind: str = "kl", mode: str = "mean") -> torch.Tensor:
    """Rows of ``logits`` distilled towards rows of the ``teacher`` similarity: ``Q = softmax_rows(teacher /
    tau_t)``, ``p = softmax_rows(logits / tau_s)``.

    ``kl``: ``(1/B) sum_i KL(Q[i] || p[i])``; ``ce``: ``-sum Q log p`` with the contrastive reductions.
    """
    log_p = (logits / tau_s).log_softmax(dim=1)
    log_q = (teacher / tau_t).log_softmax(dim=1)
    if kind == "ce":
        return cross_entropy(logits / tau_s, log_q.exp(), mode)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()
