"""Recall@K for image-text retrieval (docs/evaluation.md), from the embeddings, in chunks of queries.

Rank of a query = number of NON-matching candidates whose score is >= the matching one's. Image->text:
the image's captions are the matches and the score compared with is the best of theirs (the other captions
of the same image are never counted); text->image: the caption's image is the match. Ties count against
the query, so a collapsed model that scores every pair alike gets recall 0 at every K < N, never 100%; on
tie-free scores this is the usual rank. Recall@K = % of queries with rank < K.

Memory stays bounded for any split size: the scores of ``chunk_size`` queries against all candidates are
computed at a time, on the embeddings' device (COCO train is 113K images x 566K captions). The ranks of a
chunk use the same rule as the one-matrix form (``similarity_ranks``) and equal it exactly on the same
scores; note that a BLAS may round a score differently in its last bit depending on the block's shape.
"""
from __future__ import annotations

from typing import Optional

import torch

KS = (1, 5, 10)
DEFAULT_CHUNK_SIZE = 1024


def _image_ranks(scores: torch.Tensor, txt2img: torch.Tensor, first_image: int) -> torch.Tensor:
    """Image->text ranks of images ``first_image ..`` from their score rows ``[c, num_texts]``."""
    c = scores.shape[0]
    owner = txt2img - first_image  # each caption's image as a row of this block (outside: not ours)
    mine = ((owner >= 0) & (owner < c)).nonzero().squeeze(1)
    rows = owner[mine]
    positive = scores[rows, mine]
    best = torch.full((c,), float("-inf"), dtype=scores.dtype, device=scores.device)
    best = best.scatter_reduce(0, rows, positive, "amax")
    if c and bool((best == float("-inf")).any()):
        raise ValueError("every image needs at least one caption")
    # int32 counts: half the memory traffic of the default int64 sum (counts stay far below 2**31)
    at_least_best = (scores >= best[:, None]).sum(dim=1, dtype=torch.int32)
    # The image's own captions scoring >= its best are not competitors: at least the best one itself.
    own = torch.zeros(c, dtype=torch.int32, device=scores.device)
    own.index_add_(0, rows, (positive >= best[rows]).to(torch.int32))
    return (at_least_best - own).long()


def _text_ranks(scores: torch.Tensor, own_images: torch.Tensor) -> torch.Tensor:
    """Text->image ranks of captions from their score columns ``[num_images, c]``; ``own_images`` [c]."""
    positive = scores[own_images, torch.arange(scores.shape[1], device=scores.device)]
    return (scores >= positive[None, :]).sum(dim=0, dtype=torch.int32).long() - 1  # minus its own image


def similarity_ranks(sim: torch.Tensor, txt2img: torch.Tensor,
                     chunk_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranks from a score matrix ``sim`` [num_images, num_texts] -> (i2t ranks [num_images], t2i ranks
    [num_texts]), counted over blocks of ``chunk_size`` queries (None: the whole matrix at once). For small
    problems, and as the reference the chunked form from embeddings is checked against."""
    txt2img = txt2img.to(sim.device)
    rows = chunk_size or max(1, sim.shape[0])
    cols = chunk_size or max(1, sim.shape[1])
    i2t = [_image_ranks(sim[a:a + rows], txt2img, a) for a in range(0, sim.shape[0], rows)]
    t2i = [_text_ranks(sim[:, a:a + cols], txt2img[a:a + cols]) for a in range(0, sim.shape[1], cols)]
    empty = torch.zeros(0, dtype=torch.long, device=sim.device)
    return torch.cat(i2t) if i2t else empty, torch.cat(t2i) if t2i else empty


def retrieval_ranks(f_img: torch.Tensor, f_txt: torch.Tensor, txt2img: torch.Tensor,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t ranks [num_images], t2i ranks [num_texts]) of embeddings ``f_img`` [num_images, D] and ``f_txt``
    [num_texts, D] (score = dot product), never holding more than ``chunk_size`` x candidates scores."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    txt2img = txt2img.to(f_img.device)
    i2t = [_image_ranks(f_img[a:a + chunk_size] @ f_txt.t(), txt2img, a)
           for a in range(0, f_img.shape[0], chunk_size)]
    # Text queries take column blocks of the same product (not f_txt @ f_img.T), so that their scores are
    # the entries of f_img @ f_txt.T as for the image queries.
    t2i = [_text_ranks(f_img @ f_txt[a:a + chunk_size].t(), txt2img[a:a + chunk_size])
           for a in range(0, f_txt.shape[0], chunk_size)]
    empty = torch.zeros(0, dtype=torch.long, device=f_img.device)
    return torch.cat(i2t) if i2t else empty, torch.cat(t2i) if t2i else empty


def recall_from_ranks(i2t: torch.Tensor, t2i: torch.Tensor) -> dict[str, float]:
    """``txt_r1/5/10`` (image->text), ``img_r1/5/10`` (text->image), their means, ``r_mean`` and ``rsum``."""
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


def recall_metrics(f_img: torch.Tensor, f_txt: torch.Tensor, txt2img: torch.Tensor,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
    """Recall@K of the embeddings (see ``recall_from_ranks`` for the keys)."""
    return recall_from_ranks(*retrieval_ranks(f_img, f_txt, txt2img, chunk_size))


def fold_metrics(f_img: torch.Tensor, f_txt: torch.Tensor, txt2img: torch.Tensor, fold_size: int = 1000,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, image_order=None) -> dict[str, float]:
    """Mean of ``recall_metrics`` over folds of ``fold_size`` consecutive images of ``image_order`` (default:
    the rows' order) and their captions (COCO 1K test: 5 folds of the 5K test images, in the split file's
    order of first appearance, Karpathy's, as VSE++, SCAN and NPC do)."""
    device, n = f_img.device, f_img.shape[0]
    txt2img = txt2img.to(device)
    order = torch.arange(n, device=device) if image_order is None else torch.as_tensor(image_order, device=device)
    folds = []
    for start in range(0, n, fold_size):
        fold = order[start:start + fold_size]
        position = torch.full((n,), -1, dtype=torch.long, device=device)  # image row -> its place in the fold
        position[fold] = torch.arange(len(fold), device=device)
        texts = (position[txt2img] >= 0).nonzero().squeeze(1)
        folds.append(recall_metrics(f_img[fold], f_txt[texts], position[txt2img[texts]], chunk_size))
    return {k: sum(f[k] for f in folds) / len(folds) for k in folds[0]}
