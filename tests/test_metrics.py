"""Recall@K (docs/evaluation.md) against a brute-force loop implementation written from the definition.

Rank = number of NON-matching candidates whose score is >= the matching one's (ties count against the
query). Image->text rank of image i = the best (minimum) rank among its captions, the image's other captions
never counted as non-matching; text->image rank of caption t = the rank of its image. Recall@K = 100 *
fraction of queries with rank < K. ``txt_r*`` = image->text, ``img_r*`` = text->image.

The metrics take embeddings; a score matrix ``sim`` is given to them exactly as ``f_img = sim`` and
``f_txt = identity`` (each score is one product with 1.0 plus zeros, so no rounding).
"""
from __future__ import annotations

import random

import pytest
import torch

from icsd.metrics import fold_metrics, recall_from_ranks, recall_metrics, retrieval_ranks, similarity_ranks

KEYS = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean",
        "rsum")


# ----------------------------------------------------------------------------------------------------
# Brute force
# ----------------------------------------------------------------------------------------------------
def brute_force(sim: list, txt2img: list, strict: bool = False) -> dict:
    """The rule of docs/evaluation.md (``>=``, non-matching candidates only); ``strict=True`` is the old rule
    (strictly higher scores only), which must give the same numbers on tie-free scores."""
    beats = (lambda a, b: a > b) if strict else (lambda a, b: a >= b)
    n_img, n_txt = len(sim), len(sim[0])
    captions = [[t for t in range(n_txt) if txt2img[t] == i] for i in range(n_img)]
    i2t_ranks = []
    for i in range(n_img):
        best = None
        for c in captions[i]:
            rank = 0
            for t in range(n_txt):
                if txt2img[t] != i and beats(sim[i][t], sim[i][c]):
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


def as_embeddings(sim) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings whose dot products are exactly ``sim``: f_img = sim, f_txt = identity."""
    sim = torch.as_tensor(sim, dtype=torch.float32)
    return sim, torch.eye(sim.shape[1])


def run(sim: list, txt2img: list, fn=recall_metrics, **kw):
    return fn(*as_embeddings(sim), torch.tensor(txt2img, dtype=torch.long), **kw)


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
    # ties really matter here: the old strict rule (">") gives other, higher numbers
    strict = brute_force(sim, txt2img, strict=True)
    assert strict["txt_r1"] > expected["txt_r1"] and strict["img_r1"] > expected["img_r1"]
    assert_metrics_equal(run(sim, txt2img), expected)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_tie_free_scores_give_the_old_strict_numbers(seed):
    sim, txt2img = make_problem(seed, n_img=33, integer=False)
    assert len({v for row in sim for v in row}) == len(sim) * len(sim[0])  # really tie-free
    assert_metrics_equal(run(sim, txt2img), brute_force(sim, txt2img, strict=True))


@pytest.mark.parametrize("n_img,per_image", [(3, 1), (12, 5), (40, 2)])
def test_constant_scores_give_recall_zero_at_every_k_below_n(n_img, per_image):
    """A collapsed model: every image and caption embedded alike. Every non-matching candidate ties with the
    matching one, so the rank is the number of non-matching candidates: recall 0 unless K exceeds it."""
    txt2img = torch.arange(n_img).repeat_interleave(per_image)
    f_img, f_txt = torch.full((n_img, 8), 0.25), torch.full((len(txt2img), 8), 0.25)
    i2t, t2i = retrieval_ranks(f_img, f_txt, txt2img, chunk_size=5)
    assert torch.equal(i2t, torch.full((n_img,), len(txt2img) - per_image))
    assert torch.equal(t2i, torch.full((len(txt2img),), n_img - 1))
    got = recall_metrics(f_img, f_txt, txt2img)
    for K in (1, 5, 10):
        assert got[f"img_r{K}"] == (100.0 if K > n_img - 1 else 0.0), K
        assert got[f"txt_r{K}"] == (100.0 if K > len(txt2img) - per_image else 0.0), K
    assert got["txt_r1"] == got["img_r1"] == 0.0


def test_ties_count_against_the_query():
    # 3 images, 1 caption each, all scores equal: every rank is 2 (both other candidates tie)
    sim = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    got = run(sim, [0, 1, 2])
    assert got["txt_r1"] == 0.0 and got["img_r1"] == 0.0 and got["txt_r5"] == 100.0 and got["rsum"] == 400.0
    # image 0: its caption (text 2) ties with text 0 and is beaten by text 1 -> rank 2
    sim = [[5.0, 6.0, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    got = run(sim, [1, 2, 0])
    # i2t ranks: image 0 -> 2, image 1 (text 0) -> 2 (all zero), image 2 (text 1) -> 2
    assert got["txt_r1"] == 0.0 and got["txt_r5"] == 100.0
    # t2i: text 0 (image 1, 0.0): image 0 (5) and image 2 (0, tie) -> 2; text 1 (image 2): 2; text 2 (image 0,
    # 5.0 against 0, 0) -> 0
    assert got["img_r1"] == pytest.approx(100 / 3) and got["img_r5"] == 100.0
    assert_metrics_equal(got, brute_force(sim, [1, 2, 0]))


def test_other_captions_of_the_image_are_not_competitors():
    # image 0's two captions tie at the top; image 1's caption is far below: image 0 has rank 0
    sim = [[0.9, 0.9, 0.1],
           [0.0, 0.0, 0.5]]
    i2t, _ = retrieval_ranks(*as_embeddings(sim), torch.tensor([0, 0, 1]))
    assert i2t.tolist() == [0, 0]
    # a non-matching caption tying with the best caption of image 0 does count
    sim = [[0.9, 0.2, 0.9],
           [0.0, 0.1, 0.5]]
    i2t, _ = retrieval_ranks(*as_embeddings(sim), torch.tensor([0, 0, 1]))
    assert i2t.tolist() == [1, 0]


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
    f_img = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=1)
    f_txt = torch.nn.functional.normalize(f_img[txt2img] + 0.6 * torch.randn(n, 16, generator=gen), dim=1)
    got = fold_metrics(f_img, f_txt, txt2img)
    sim = f_img @ f_txt.t()
    halves = []
    for start in (0, 1000):
        texts = ((txt2img >= start) & (txt2img < start + 1000)).nonzero().squeeze(1)
        halves.append(recall_from_ranks(*similarity_ranks(sim[start:start + 1000][:, texts],
                                                          txt2img[texts] - start)))
    whole = recall_from_ranks(*similarity_ranks(sim, txt2img))
    for k in KEYS:
        assert got[k] == pytest.approx((halves[0][k] + halves[1][k]) / 2, abs=1e-9), k
    assert got["rsum"] > whole["rsum"]


# ----------------------------------------------------------------------------------------------------
# Chunked ranking equals the one-matrix computation
# ----------------------------------------------------------------------------------------------------
def dyadic_embeddings(seed: int, n_img: int, dim: int = 6):
    """Embeddings with entries in {-1, -0.5, 0, 0.5, 1}: every dot product is exact in float32 whatever the
    summation order, so the scores (and their many ties) are the same bits in every block shape."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 7, (n_img,), generator=gen)
    txt2img = torch.arange(n_img).repeat_interleave(counts)
    txt2img = txt2img[torch.randperm(len(txt2img), generator=gen)]
    f_img = torch.randint(-2, 3, (n_img, dim), generator=gen).float() / 2
    f_txt = torch.randint(-2, 3, (len(txt2img), dim), generator=gen).float() / 2
    # half of the captions copy their image, so matches are often at the top (and tie among themselves)
    copy = torch.rand(len(txt2img), generator=gen) < 0.5
    f_txt[copy] = f_img[txt2img[copy]]
    return f_img, f_txt, txt2img


@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_ranks_equal_the_one_matrix_ranks_with_ties(seed):
    f_img, f_txt, txt2img = dyadic_embeddings(seed, n_img=23)
    sim = f_img @ f_txt.t()
    assert len(torch.unique(sim)) < sim.numel() / 4  # many ties
    ref_i2t, ref_t2i = similarity_ranks(sim, txt2img)
    # the one-matrix ranks are the brute-force ones
    expected = brute_force(sim.tolist(), txt2img.tolist())
    assert_metrics_equal(recall_from_ranks(ref_i2t, ref_t2i), expected)
    assert 0 < expected["txt_r1"] < 100 and 0 < expected["img_r5"] < 100
    for chunk in (1, 2, 5, 7, 22, 23, 24, 1000):  # 23 images, ~80 captions: most sizes do not divide them
        i2t, t2i = retrieval_ranks(f_img, f_txt, txt2img, chunk_size=chunk)
        assert torch.equal(i2t, ref_i2t) and torch.equal(t2i, ref_t2i), chunk


def test_chunked_ranks_equal_the_one_matrix_ranks_on_real_valued_embeddings():
    gen = torch.Generator().manual_seed(5)
    n_img, txt2img = 300, torch.arange(300).repeat_interleave(5)
    f_img = torch.nn.functional.normalize(torch.randn(n_img, 32, generator=gen), dim=1)
    f_txt = torch.nn.functional.normalize(f_img[txt2img] + 0.8 * torch.randn(len(txt2img), 32, generator=gen), dim=1)
    ref = recall_from_ranks(*similarity_ranks(f_img @ f_txt.t(), txt2img))
    assert 0 < ref["txt_r1"] < 100
    for chunk in (64, 299, 1024):
        assert recall_metrics(f_img, f_txt, txt2img, chunk) == ref, chunk


def test_chunked_fold_metrics_equal_brute_force_folds():
    f_img, f_txt, txt2img = dyadic_embeddings(3, n_img=24)
    expected = brute_force_folds((f_img @ f_txt.t()).tolist(), txt2img.tolist(), 6)
    for chunk in (1, 4, 7):
        assert_metrics_equal(fold_metrics(f_img, f_txt, txt2img, fold_size=6, chunk_size=chunk), expected)


def test_image_without_caption_is_an_error():
    with pytest.raises(ValueError, match="every image needs at least one caption"):
        retrieval_ranks(torch.ones(3, 2), torch.ones(2, 2), torch.tensor([0, 2]), chunk_size=2)


def test_folds_follow_the_split_files_order(tmp_path):
    """COCO 1K: the folds are consecutive images in the split file's order of first appearance (Karpathy's),
    while the images are encoded sorted by image_id: a file whose order differs from the sorted one gives the
    folds of the file's consecutive images."""
    import json

    from icsd.data.annotations import load_split

    file_ids = ["a", "d", "b", "e", "c", "f"]  # sorted: a b c d e f; folds of 3: {a, d, b}, {e, c, f}
    records = [{"image_path": f"{i}.jpg", "caption": f"caption {k} of {i}", "image_id": i}
               for i in file_ids for k in range(2)]
    (tmp_path / "test.json").write_text(json.dumps(records))
    split = load_split("test", str(tmp_path / "test.json"), str(tmp_path), check_images=False)
    assert split.image_ids == sorted(file_ids) and split.file_order.tolist() == [0, 3, 1, 4, 2, 5]
    sim, _ = make_problem(11, n_img=6, integer=False)
    txt2img = split.txt2img.tolist()
    sim = [[sim[i][t % len(sim[0])] for t in range(len(txt2img))] for i in range(6)]
    got = run(sim, txt2img, fold_metrics, fold_size=3, image_order=split.file_order)
    folds = []
    for fold in ([0, 3, 1], [4, 2, 5]):  # the file's consecutive images, as rows of the sorted encoding
        texts = [t for t in range(len(txt2img)) if txt2img[t] in fold]
        folds.append(brute_force([[sim[i][t] for t in texts] for i in fold], [fold.index(txt2img[t]) for t in texts]))
    expected = {k: sum(f[k] for f in folds) / 2 for k in KEYS}
    assert_metrics_equal(got, expected)
    assert got != run(sim, txt2img, fold_metrics, fold_size=3)  # the sorted folds are other sets of images
