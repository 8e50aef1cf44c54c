"""Benchmark: evaluation time at COCO-5K shape (docs/evaluation.md, docs/benchmarks.md): encoding vs ranking.

    .venv/bin/python bench/eval_speed.py                       # 5,000 images x 25,000 captions, D 512
    .venv/bin/python bench/eval_speed.py --images 1000 --loop-rows 100

Ranking uses random normalised embeddings (each caption = its image's embedding plus noise, so recalls are
neither 0 nor 100) and prints one table, one row per step:

  step          what is timed:
                  encode images / encode texts: the tiny model (configs/models/icsd-tiny.json, random init,
                    64 px images, 32-token captions) encoding --encode-batches batches of the eval batch sizes
                    (128 images / 256 texts), no grad, fp32, on the CPU; seconds = the median time per item
                    times the split's count (extrapolated, not run on the whole split). A ViT-B/32 at 224 px
                    costs far more per image: this row is a lower bound.
                  scores: the one matrix product f_img @ f_txt.T (float32 GEMM), which any exact method pays.
                  rank chunked from scores: the ranking work alone, on the given score matrix, counted in
                    blocks of --chunk queries (icsd.metrics.similarity_ranks(sim, txt2img, chunk)): what the
                    reference's loop did, and what "25x faster than the loop" is measured on.
                  rank loop from scores: the slow obviously-correct reference on the same matrix: for each
                    query a stable argsort of its row (non-matches before matches among equal scores) and
                    the position of the first match. Timed on --loop-rows image rows and 5x as many text
                    columns, extrapolated to all rows; its ranks on those rows are checked against the
                    chunked ones.
                  rank chunked from emb.: icsd.metrics.recall_metrics on the embeddings, --chunk queries at a
                    time, never the whole matrix (two GEMM passes, image row blocks and text column blocks, +
                    counting): what evaluation runs. Compared with loop + scores.
                  rank one matrix from emb.: sim = f_img @ f_txt.T once, then similarity_ranks (memory: the
                    whole matrix). Its ranks must equal the chunked ones exactly (asserted).
  items         queries (or items encoded) the row stands for
  seconds       median over --repeats runs (encode, loop: per item x items)
  ms_per_item   seconds / items x 1000
  loop_over_x   the loop's seconds / this row's seconds, like for like: rows "from scores" against the loop on
                the scores, rows "from emb." against loop + scores ("-" for the encoding rows); acceptance
                for "rank chunked from scores": >= 25 on a 2-core CPU

Timings on a shared machine vary; every ranking row is measured in the same run, medians of --repeats.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from icsd.metrics import recall_from_ranks, recall_metrics, retrieval_ranks, similarity_ranks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def embeddings(images: int, per_image: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    txt2img = torch.arange(images).repeat_interleave(per_image)
    txt2img = txt2img[torch.randperm(len(txt2img), generator=gen)]
    f_img = torch.nn.functional.normalize(torch.randn(images, dim, generator=gen), dim=1)
    noise = torch.randn(len(txt2img), dim, generator=gen)
    f_txt = torch.nn.functional.normalize(f_img[txt2img] + 6.0 * noise / dim ** 0.5, dim=1)  # cos ~0.16
    return f_img, f_txt, txt2img


def loop_rank(scores: np.ndarray, match: np.ndarray) -> int:
    """Rank of one query from its row: stable descending order with non-matches first among equal scores;
    the position of the first match = the number of non-matches scoring >= the best match."""
    order = np.lexsort((match, -scores))  # primary key -score, then non-match (0) before match (1)
    return int(np.argmax(match[order]))


def encode_seconds_per_item(batches: int) -> tuple[float, float]:
    from icsd.config import load_config
    from icsd.models import build_model

    cfg = load_config(os.path.join(REPO, "configs", "example", "icsd.yaml"),
                      [f"model.clip={REPO}/configs/models/icsd-tiny.json", "model.pretrained=null"])
    model, backbone = build_model(cfg)
    model.eval()
    size = backbone.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(cfg.eval.image_batch_size, 3, size, size)
    tokens = backbone.tokenizer(["a man riding a wave on top of a surfboard"] * cfg.eval.text_batch_size)
    with torch.no_grad():
        model.encode_image(images[:8]), model.encode_text(tokens[:8])  # warm-up
        t_img, _ = median_seconds(lambda: model.encode_image(images), batches)
        t_txt, _ = median_seconds(lambda: model.encode_text(tokens), batches)
    return t_img / len(images), t_txt / len(tokens)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="images (COCO 5K test: 5000)")
    parser.add_argument("--per-image", type=int, default=5, help="captions per image")
    parser.add_argument("--dim", type=int, default=512, help="embedding size (ViT-B/32: 512)")
    parser.add_argument("--chunk", type=int, default=1024, help="queries ranked at a time (eval.rank_chunk_size)")
    parser.add_argument("--loop-rows", type=int, default=200, help="image rows the loop is timed on (and 5x text)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encode-batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    f_img, f_txt, txt2img = embeddings(args.images, args.per_image, args.dim)
    n_img, n_txt = len(f_img), len(f_txt)
    t_chunk, chunked = median_seconds(lambda: retrieval_ranks(f_img, f_txt, txt2img, args.chunk), args.repeats)

    def one_matrix():
        return similarity_ranks(f_img @ f_txt.t(), txt2img)

    t_one, whole = median_seconds(one_matrix, args.repeats)
    assert all(torch.equal(a, b) for a, b in zip(chunked, whole)), "chunked ranks differ from the one-matrix ranks"
    assert recall_from_ranks(*chunked) == recall_from_ranks(*whole) == recall_metrics(f_img, f_txt, txt2img, args.chunk)

    t_mm, sim = median_seconds(lambda: f_img @ f_txt.t(), args.repeats)
    t_count, counted = median_seconds(lambda: similarity_ranks(sim, txt2img, args.chunk), args.repeats)
    assert all(torch.equal(a, b) for a, b in zip(counted, whole)), "counting in blocks differs"
    sim_np, t2i_np = sim.numpy(), txt2img.numpy()
    rows = min(args.loop_rows, n_img)
    cols = min(5 * args.loop_rows, n_txt)
    start = time.perf_counter()
    loop_i2t = [loop_rank(sim_np[i], t2i_np == i) for i in range(rows)]
    per_img = (time.perf_counter() - start) / rows
    start = time.perf_counter()
    loop_t2i = [loop_rank(sim_np[:, t], np.arange(n_img) == t2i_np[t]) for t in range(cols)]
    per_txt = (time.perf_counter() - start) / cols
    assert loop_i2t == chunked[0][:rows].tolist() and loop_t2i == chunked[1][:cols].tolist(), "loop ranks differ"
    t_loop = per_img * n_img + per_txt * n_txt  # ranking the given scores

    enc_img, enc_txt = encode_seconds_per_item(args.encode_batches)
    queries = n_img + n_txt
    table = [("encode images (tiny, extrap.)", n_img, enc_img * n_img, None),
             ("encode texts (tiny, extrap.)", n_txt, enc_txt * n_txt, None),
             ("scores f_img @ f_txt.T (GEMM)", queries, t_mm, None),
             (f"rank chunked ({args.chunk}) from scores", queries, t_count, t_loop),
             ("rank loop from scores (extrap.)", queries, t_loop, t_loop),
             (f"rank chunked ({args.chunk}) from emb.", queries, t_chunk, t_loop + t_mm),
             ("rank one matrix from emb.", queries, t_one, t_loop + t_mm),
             ("rank loop + scores (extrap.)", queries, t_loop + t_mm, t_loop + t_mm)]
    print(f"# {n_img} images x {n_txt} captions, D {args.dim}, torch threads {torch.get_num_threads()}; "
          f"chunked == one matrix: exact; R@1 i2t {recall_from_ranks(*chunked)['txt_r1']:.2f}")
    print(f"{'step':<34} {'items':>8} {'seconds':>9} {'ms_per_item':>12} {'loop_over_x':>12}")
    for name, items, seconds, loop in table:
        ratio = f"{loop / seconds:.1f}" if loop is not None else "-"
        print(f"{name:<34} {items:>8} {seconds:>9.3f} {1000 * seconds / items:>12.4f} {ratio:>12}")


if __name__ == "__main__":
    main()
