"""Recall@K for image-text retrieval (SPEC section 6), vectorised.

Rank = number of candidates with a strictly higher score. Image->text: the best rank among the image's
captions; text->image: the rank of the caption's image. Recall@K = % of queries with rank < K.
"""
from __future__ import annotations

import torch

KS = (1, 5, 10)


def retrieval_ranks(sim: torch.Tensor, txt2img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sim`` [num_images, num_texts], ``txt2img`` [num_texts] -> (i2t ranks [num_images], t2i ranks [num_texts])."""
    num_images = sim.shape[0]
    positive = torch.zeros_like(sim, dtype=torch.bool)
    positive[txt2img, torch.arange(sim.shape[1], device=sim.device)] = True
    # The best rank among an image's captions is the rank of its highest-scoring caption.
    best_positive = sim.masked_fill(~positive, float("-inf")).amax(dim=1)
    i2t = (sim > best_positive[:, None]).sum(dim=1)
    own_image = sim[txt2img, torch.arange(sim.shape[1], device=sim.device)]
    t2i = (sim > own_image[None, :]).sum(dim=0)
    if num_images and bool((best_positive == float("-inf")).any()):
        raise ValueError("every image needs at least one caption")
    return i2t, t2i


def recall_metrics(sim: torch.Tensor, txt2img: torch.Tensor) -> dict[str, float]:
    """``txt_r1/5/10`` (image->text), ``img_r1/5/10`` (text->image), their means, ``r_mean`` and ``rsum``."""
    i2t, t2i = retrieval_ranks(sim, txt2img)
    out = {}
    for K in KS:
        out[f"txt_r{K}"] = 100.0 * (i2t < K).double().mean().item()
    for K in KS:
        out[f"img_r{K}"] = 100.0 * (t2i < K).double().mean().item()
    out["txt_r_mean"] = sum(out[f"txt_r{K}"] for K in KS) / len(KS)
    out["img_r_mean"] = sum(out[f"img_r{K}"] for K in KS) / len(KS)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    out["rsum"] = sum(out[f"txt_r{K}"] + out[f"img_r{K}"] for K in KS)
    return out


def fold_metrics(sim: torch.Tensor, txt2img: torch.Tensor, fold_size: int = 1000) -> dict[str, float]:
    """Mean of ``recall_metrics`` over consecutive folds of ``fold_size`` images and their captions
    (COCO 1K test: 5 folds of the 5K test images)."""
    folds = []
    for start in range(0, sim.shape[0], fold_size):
        texts = ((txt2img >= start) & (txt2img < start + fold_size)).nonzero().squeeze(1)
        folds.append(recall_metrics(sim[start:start + fold_size][:, texts], txt2img[texts] - start))
    return {k: sum(f[k] for f in folds) / len(folds) for k in folds[0]}
