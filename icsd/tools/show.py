"""A qualitative sheet: what the model retrieves for a few queries of a split, as PNG and/or HTML.

    python -m icsd.show output/example/icsd_seed42/checkpoint_best.pth --split test --queries 5 \\
        --out sheet.png sheet.html

For N text queries, the top-5 images (the ground truth framed in green); for N image queries, the top-5
captions (true ones marked). Scores are evaluation's: the split is encoded in the same fixed batches by
the same function as ``evaluation.py``. Queries are evenly spaced over the split (deterministic), or a
seeded random sample with ``--seed``. The HTML file is self-contained (thumbnails embedded as data URIs).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import os
import random
import textwrap
from dataclasses import dataclass
from typing import Optional, Sequence

from icsd.errors import ICSDError
from icsd.files import require_creatable_file, write_atomic, write_text
from icsd.tools.command import run_command

logger = logging.getLogger(__name__)

TOP_K = 5
THUMB = 128  # thumbnail side in pixels (PNG and HTML)


@dataclass
class Hit:
    index: int  # image index (text queries) or caption column (image queries)
    score: float
    correct: bool  # the ground-truth image / a true caption
    text: str = ""  # the caption (image queries)
    image_path: str = ""  # the image (text queries)
    image_id: str = ""


@dataclass
class Query:
    index: int  # caption column (text query) or image index (image query)
    text: str  # the caption, or the image id
    image_path: str  # the query image (image query) or the ground-truth image (text query)
    gt_rank: int  # evaluation's rank of the ground truth: non-matching candidates scoring >= it
    hits: list[Hit]


@dataclass
class Sheet:
    split: str
    source: str
    text_queries: list[Query]
    image_queries: list[Query]


def pick(total: int, n: int, seed: Optional[int] = None) -> list[int]:
    """``n`` distinct indices of ``range(total)``: evenly spaced (first and last included), or a sorted
    random sample drawn with ``seed``."""
    n = min(n, total)
    if seed is not None:
        return sorted(random.Random(seed).sample(range(total), n))
    if n <= 1:
        return list(range(n))
    return [round(i * (total - 1) / (n - 1)) for i in range(n)]


def compute_sheet(sim, txt2img, captions: Sequence[str], image_ids: Sequence[str], image_paths: Sequence[str],
                  n_queries: int, seed: Optional[int] = None, k: int = TOP_K, split: str = "",
                  source: str = "") -> Sheet:
    """The sheet's data from a similarity matrix ``sim`` [images, captions] (columns in evaluation's
    caption order; ``captions[j]`` and ``txt2img[j]`` describe column j)."""
    import torch

    from icsd.metrics import similarity_ranks

    sim, txt2img = sim.float().cpu(), torch.as_tensor(txt2img).cpu()
    num_images, num_captions = sim.shape
    i2t_ranks, t2i_ranks = similarity_ranks(sim, txt2img)  # evaluation's ranks (ties count against the query)
    k_img, k_txt = min(k, num_images), min(k, num_captions)
    text_queries = []
    for j in pick(num_captions, n_queries, seed):
        scores, gt = sim[:, j], int(txt2img[j])
        order = torch.sort(scores, descending=True, stable=True).indices[:k_img].tolist()
        text_queries.append(Query(j, captions[j], image_paths[gt], int(t2i_ranks[j]), [
            Hit(i, float(scores[i]), i == gt, image_path=image_paths[i], image_id=str(image_ids[i])) for i in order]))
    image_queries = []
    for i in pick(num_images, n_queries, seed):
        scores, true = sim[i], txt2img == i
        order = torch.sort(scores, descending=True, stable=True).indices[:k_txt].tolist()
        image_queries.append(Query(i, str(image_ids[i]), image_paths[i], int(i2t_ranks[i]), [
            Hit(j, float(scores[j]), bool(true[j]), text=captions[j]) for j in order]))
    return Sheet(split, source, text_queries, image_queries)


def sheet_for_checkpoint(path: str, split_name: str, n_queries: int, seed: Optional[int] = None,
                         config: Optional[str] = None, opts: Sequence[str] = (), device: Optional[str] = None):
    """Encode ``split_name`` with the checkpoint's (or export folder's) model as evaluation does; returns
    (sheet, sim, txt2img) — the last two so callers can check them against evaluation's metrics."""
    import torch

    from icsd.data.build import load_data_split
    from icsd.distributed import DistEnv, select_device
    from icsd.evaluate import encode_split
    from icsd.models import build_model_for
    from icsd.pretrained import config_for_weights, load_checkpoint_or_export

    state = load_checkpoint_or_export(path, "CKPT_OR_EXPORT")
    cfg = config_for_weights(state, path, config, opts)
    env = DistEnv(device=select_device(device or cfg.train.device))
    split = load_data_split(cfg.data, split_name)
    model, backbone = build_model_for(cfg, env, state["model"], path)
    f_img, f_txt, texts = encode_split(model, split, backbone.pixels, backbone.tokenizer, cfg, env)
    with torch.no_grad():
        sim = (f_img.to(env.device) @ f_txt.to(env.device).t()).cpu()
    captions = [split.captions[t] for t in texts.order]  # column j of sim is record texts.order[j]
    sheet = compute_sheet(sim, texts.txt2img, captions, split.image_ids, split.image_paths, n_queries, seed,
                          split=split_name, source=path)
    return sheet, sim, texts.txt2img


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------
def thumbnail(path: str):
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return ImageOps.fit(image.convert("RGB"), (THUMB, THUMB))


def render_png(sheet: Sheet, out: str, dpi: int = 80, palette: bool = True) -> None:
    """Rows of [query | top-5]; the ground-truth image framed in green, true captions green with a tick.
    Saved as a 256-colour palette PNG by default (a fraction of the bytes, for committing and sharing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = len(sheet.text_queries) + len(sheet.image_queries)
    cols = 1 + max([len(q.hits) for q in sheet.text_queries + sheet.image_queries] + [1])
    fig, axes = plt.subplots(max(rows, 1), cols, figsize=(2.0 * cols, 1.9 * max(rows, 1)), dpi=dpi, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, query in enumerate(sheet.text_queries):
        axes[row, 0].text(0.02, 0.5, f"text query #{query.index}:\n" + textwrap.fill(query.text, 26)
                          + f"\n(gt rank {query.gt_rank + 1})", fontsize=7, va="center",
                          transform=axes[row, 0].transAxes)
        for col, hit in enumerate(query.hits, 1):
            ax = axes[row, col]
            ax.imshow(thumbnail(hit.image_path))
            ax.set_title(f"{col}. {hit.score:.3f}" + (" GT" if hit.correct else ""), fontsize=7,
                         color="green" if hit.correct else "black")
            for spine in ax.spines.values():
                spine.set_edgecolor("limegreen" if hit.correct else "lightgrey")
                spine.set_linewidth(5 if hit.correct else 0.5)
    offset = len(sheet.text_queries)
    for r, query in enumerate(sheet.image_queries):
        row = offset + r
        axes[row, 0].imshow(thumbnail(query.image_path))
        axes[row, 0].set_title(f"image query #{query.index}", fontsize=7)
        axes[row, 0].set_xlabel(textwrap.fill(query.text, 24) + f" (best true rank {query.gt_rank + 1})", fontsize=6)
        for col, hit in enumerate(query.hits, 1):
            ax = axes[row, col]
            mark = "✓ " if hit.correct else ""
            ax.text(0.03, 0.5, f"{col}. {hit.score:.3f}\n{mark}" + textwrap.fill(hit.text, 24), fontsize=6.5,
                    va="center", transform=ax.transAxes, color="green" if hit.correct else "black",
                    fontweight="bold" if hit.correct else "normal")
            if hit.correct:
                ax.set_facecolor("#e6f7e6")
    fig.suptitle(f"{sheet.source} — {sheet.split}: top-{cols - 1} (green = ground truth)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer)
    if palette:
        image = image.convert("RGB").quantize(256)
    write_atomic(out, lambda f: image.save(f, format="PNG", optimize=True), "sheet")


def data_uri(path: str) -> str:
    buffer = io.BytesIO()
    thumbnail(path).save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def render_html(sheet: Sheet, out: str) -> None:
    """One self-contained HTML page (thumbnails embedded), the same content as the PNG."""
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>ICSD retrieval — {e(sheet.split)}</title><style>"
             "body{font-family:sans-serif;font-size:13px}td{vertical-align:top;padding:4px;width:140px}"
             "img{width:128px;height:128px;border:4px solid #ddd}img.gt{border-color:#2a2}"
             ".true{color:#161;font-weight:bold;background:#e6f7e6}.q{width:220px}</style>",
             f"<h2>{e(sheet.source)} — split {e(sheet.split)}</h2>",
             "<h3>Text queries: top images (ground truth framed green)</h3><table>"]
    cache: dict[str, str] = {}

    def uri(path: str) -> str:
        if path not in cache:
            cache[path] = data_uri(path)
        return cache[path]

    for q in sheet.text_queries:
        cells = "".join(f"<td><img class='{'gt' if h.correct else ''}' src='{uri(h.image_path)}' "
                        f"alt='{e(h.image_id)}'><br>{n}. {h.score:.3f}{' <b>GT</b>' if h.correct else ''}</td>"
                        for n, h in enumerate(q.hits, 1))
        parts.append(f"<tr><td class='q'>#{q.index}: {e(q.text)}<br><small>ground truth rank {q.gt_rank + 1}"
                     f"</small></td>{cells}</tr>")
    parts.append("</table><h3>Image queries: top captions (true ones ✓)</h3><table>")
    for q in sheet.image_queries:
        cells = "".join(f"<td class='{'true' if h.correct else ''}'>{n}. {h.score:.3f}<br>"
                        f"{'✓ ' if h.correct else ''}{e(h.text)}</td>" for n, h in enumerate(q.hits, 1))
        parts.append(f"<tr><td class='q'><img src='{uri(q.image_path)}'><br>{e(q.text)}<br><small>best true "
                     f"caption rank {q.gt_rank + 1}</small></td>{cells}</tr>")
    parts.append("</table>")
    write_text(out, "\n".join(parts), "sheet")


RENDERERS = {".png": render_png, ".html": render_html, ".htm": render_html}


def write_outputs(sheet: Sheet, outs: Sequence[str]) -> None:
    for out in outs:
        RENDERERS[os.path.splitext(out)[1].lower()](sheet, out)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m icsd.show", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT_OR_EXPORT", help="a checkpoint (.pth) or an export folder")
    parser.add_argument("--split", default="test", help="the split (default: test)")
    parser.add_argument("--queries", type=int, default=5, help="text queries and image queries, each (default: 5)")
    parser.add_argument("--seed", type=int, default=None, help="sample the queries with this seed (default: "
                                                               "evenly spaced over the split)")
    parser.add_argument("--out", nargs="+", default=["sheet.png", "sheet.html"], help="outputs, .png and/or .html")
    parser.add_argument("--config", default=None, help="YAML config (default: the one saved with the weights)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the config's train.device)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> None:
        if args.queries < 1:
            raise ICSDError("--queries must be >= 1")
        for out in args.out:
            if os.path.splitext(out)[1].lower() not in RENDERERS:
                raise ICSDError(f"--out {out}: the extension must be .png or .html")
            require_creatable_file(out, "--out")
        sheet, _, _ = sheet_for_checkpoint(args.checkpoint, args.split, args.queries, args.seed, args.config,
                                           args.opts, args.device)
        write_outputs(sheet, args.out)
        for out in args.out:
            logger.info(f"wrote {out} ({os.path.getsize(out) / 1e3:.0f} kB)")

    return run_command(body)

