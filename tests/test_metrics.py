"""Recall@K (SPEC section 6) against a brute-force loop implementation written from the definition.

Rank = number of candidates with a strictly higher score. Image->text rank of image i = the best (minimum)
rank among its captions; text->image rank of caption t = the rank of its image. Recall@K = 100 * fraction
of queries with rank < K. ``txt_r*`` = image->text, ``img_r*`` = text->image.
"""
from __future__ import annotations

import random

import pytest
import torch

from icsd.metrics import fold_metrics, recall_metrics

KEYS = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean",
        "rsum")


# ----------------------------------------------------------------------------------------------------
# Brute force
# ----------------------------------------------------------------------------------------------------
def brute_force(sim: list, txt2img: list, strict: bool = True) -> dict:
    """``strict=False`` (counting other candidates with an equal score too) only serves to show that the
    tie cases below really exercise the strictness."""
    beats = (lambda a, b: a > b) if strict else (lambda a, b: a >= b)
    n_img, n_txt = len(sim), len(sim[0])
    captions = [[t for t in range(n_txt) if txt2img[t] == i] for i in range(n_img)]
    i2t_ranks = []
    for i in range(n_img):
        best = None
        for c in captions[i]:
            rank = 0
            for t in range(n_txt):
                if t != c and beats(sim[i][t], sim[i][c]):
                    rank += 1
            if best is None or rank < best:
                best = rank
        i2t_ranks.append(best)
    t2i_ranks = []
    for t in range(n_txt):
        own = txt2img[t]
        rank = 0
        for i in range(n_img):
            if i != own and beats(sim[i][t], sim[own][t]):
                rank += 1
        t2i_ranks.append(rank)
    res = {}
    for K in (1, 5, 10):
        res[f"txt_r{K}"] = 100.0 * sum(1 for r in i2t_ranks if r < K) / n_img
    for K in (1, 5, 10):
        res[f"img_r{K}"] = 100.0 * sum(1 for r in t2i_ranks if r < K) / n_txt
    res["txt_r_mean"] = (res["txt_r1"] + res["txt_r5"] + res["txt_r10"]) / 3
    res["img_r_mean"] = (res["img_r1"] + res["img_r5"] + res["img_r10"]) / 3
    res["r_mean"] = (res["txt_r_mean"] + res["img_r_mean"]) / 2
    res["rsum"] = (res["txt_r1"] + res["txt_r5"] + res["txt_r10"] + res["img_r1"] + res["img_r5"]
                   + res["img_r10"])
    return res


def brute_force_folds(sim: list, txt2img: list, fold_size: int) -> dict:
    n_img = len(sim)
    folds = []
    for start in range(0, n_img, fold_size):
        images = list(range(start, min(start + fold_size, n_img)))
        texts = [t for t in range(len(txt2img)) if start <= txt2img[t] < start + fold_size]
        sub = [[sim[i][t] for t in texts] for i in images]
        folds.append(brute_force(sub, [txt2img[t] - start for t in texts]))
    return {k: sum(f[k] for f in folds) / len(folds) for k in KEYS}


def make_problem(seed: int, n_img: int, integer: bool, low: int = 0, high: int = 4):
    """Random scores; every image has 1..6 captions, captions in shuffled order."""
    rng = random.Random(seed)
    txt2img = [i for i in range(n_img) for _ in range(rng.randint(1, 6))]
    rng.shuffle(txt2img)
    n_txt = len(txt2img)
    if integer:
        sim = [[float(rng.randint(low, high)) for _ in range(n_txt)] for _ in range(n_img)]
    else:
        sim = [[rng.gauss(0.0, 1.0) for _ in range(n_txt)] for _ in range(n_img)]
    # make the true pairs somewhat more likely to score high, so recalls are spread out
    for t, i in enumerate(txt2img):
        if rng.random() < 0.4:
            sim[i][t] += 2.0 if integer else 1.5
    return sim, txt2img


def assert_metrics_equal(got: dict, expected: dict, tol: float = 1e-9):
    for k in KEYS:
        assert k in got, k
        assert abs(float(got[k]) - expected[k]) <= tol, (k, got[k], expected[k])


def run(sim: list, txt2img: list, fn=recall_metrics, **kw):
    return fn(torch.tensor(sim, dtype=torch.float32), torch.tensor(txt2img, dtype=torch.long), **kw)


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_continuous(seed):
    sim, txt2img = make_problem(seed, n_img=37, integer=False)
    assert len(set(txt2img)) == 37 and len(txt2img) > 37
    expected = brute_force(sim, txt2img)
    assert 0 < expected["txt_r1"] < 100 and 0 < expected["img_r10"] < 100  # a non-trivial case
    assert_metrics_equal(run(sim, txt2img), expected)


@pytest.mark.parametrize("seed,high", [(3, 3), (4, 5), (5, 9)])
def test_recall_matches_brute_force_with_ties(seed, high):
    sim, txt2img = make_problem(seed, n_img=30, integer=True, high=high)
    expected = brute_force(sim, txt2img)
    # ties really matter here: counting ">=" instead of ">" would give other numbers
    nonstrict = brute_force(sim, txt2img, strict=False)
    assert nonstrict["txt_r1"] < expected["txt_r1"] and nonstrict["img_r1"] < expected["img_r1"]
    assert_metrics_equal(run(sim, txt2img), expected)


def test_ties_count_only_strictly_higher_scores():
    # 3 images, 1 caption each, all scores equal: every rank is 0 (nothing strictly higher)
    sim = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    got = run(sim, [0, 1, 2])
    assert got["txt_r1"] == 100.0 and got["img_r1"] == 100.0 and got["rsum"] == 600.0
    # image 0: its caption (text 2) ties with text 0 and is beaten by text 1 -> rank 1
    sim = [[5.0, 6.0, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    got = run(sim, [1, 2, 0])
    # i2t ranks: image 0 -> 1, image 1 (text 0) -> 0 (all zero), image 2 (text 1) -> 0
    assert got["txt_r1"] == pytest.approx(200 / 3)
    # t2i: text 0 (image 1): image 0 scores 5 > 0 -> rank 1; text 1 (image 2): rank 1; text 2 (image 0): rank 0
    assert got["img_r1"] == pytest.approx(100 / 3) and got["img_r5"] == 100.0


def test_best_caption_rank_is_used():
    # image 0 has two captions; one is ranked last, the other first -> rank 0
    sim = [[0.9, -1.0, 0.1, 0.2],
           [0.0, 0.5, 0.3, 0.95]]
    txt2img = [0, 0, 1, 1]
    got = run(sim, txt2img)
    assert got["txt_r1"] == 100.0
    # text->image: text 1 (image 0, score -1.0) is beaten by image 1 (0.5); text 2 (image 1, 0.3) beats 0.1
    assert got["img_r1"] == pytest.approx(75.0)
    assert_metrics_equal(got, brute_force(sim, txt2img))


def test_metric_keys_and_aggregates():
    sim, txt2img = make_problem(6, n_img=25, integer=False)
    got = run(sim, txt2img)
    assert set(KEYS) <= set(got)
    assert got["txt_r_mean"] == pytest.approx((got["txt_r1"] + got["txt_r5"] + got["txt_r10"]) / 3)
    assert got["r_mean"] == pytest.approx((got["txt_r_mean"] + got["img_r_mean"]) / 2)
    assert got["rsum"] == pytest.approx(sum(got[k] for k in KEYS[:6]))
    for k in KEYS[:6]:
        assert 0.0 <= got[k] <= 100.0
    assert got["txt_r1"] <= got["txt_r5"] <= got["txt_r10"] and got["img_r1"] <= got["img_r5"] <= got["img_r10"]


def test_directions_are_not_swapped():
    """An asymmetric case: image->text is perfect, text->image is not."""
    # 2 images; image 0 has captions 0, 1; image 1 has caption 2.
    # Row 0 ranks its caption 0 first; row 1 ranks caption 2 first. Column 1 (image 0's) prefers image 1.
    sim = [[0.9, 0.1, 0.0],
           [0.2, 0.5, 0.8]]
    got = run(sim, [0, 0, 1])
    assert got["txt_r1"] == 100.0
    assert got["img_r1"] == pytest.approx(200 / 3)


@pytest.mark.parametrize("integer", [False, True])
def test_fold_metrics_matches_brute_force_per_fold(integer):
    sim, txt2img = make_problem(7 + integer, n_img=24, integer=integer, high=4)
    # the captions of all folds are interleaved in the text order
    got = run(sim, txt2img, fold_metrics, fold_size=6)
    expected = brute_force_folds(sim, txt2img, 6)
    assert_metrics_equal(got, expected)
    # folds really differ from the whole set (fewer candidates, higher recalls)
    whole = brute_force(sim, txt2img)
    assert expected["rsum"] > whole["rsum"]


def test_fold_metrics_one_fold_is_the_whole_set():
    sim, txt2img = make_problem(9, n_img=12, integer=False)
    assert_metrics_equal(run(sim, txt2img, fold_metrics, fold_size=12), brute_force(sim, txt2img))
    assert_metrics_equal(run(sim, txt2img, fold_metrics, fold_size=1000), brute_force(sim, txt2img))


def test_fold_metrics_default_fold_is_1000_images():
    gen = torch.Generator().manual_seed(10)
    n = 2000
    txt2img = torch.arange(n)[torch.randperm(n, generator=gen)]
    sim = torch.randn(n, n, generator=gen)
    sim[txt2img, torch.arange(n)] += 3.0
    got = fold_metrics(sim, txt2img)
    halves = []
    for start in (0, 1000):
        texts = ((txt2img >= start) & (txt2img < start + 1000)).nonzero().squeeze(1)
        halves.append(recall_metrics(sim[start:start + 1000][:, texts], txt2img[texts] - start))
    whole = recall_metrics(sim, txt2img)
    for k in KEYS:
        assert got[k] == pytest.approx((halves[0][k] + halves[1][k]) / 2, abs=1e-9), k
    assert got["rsum"] > whole["rsum"]
