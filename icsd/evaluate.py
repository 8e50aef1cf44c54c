"""Evaluation: encode a split in fixed batches (sharded over ranks), then Recall@K (docs/evaluation.md).

No training code path is involved: ``evaluation.py`` uses this module alone (with ``icsd.models``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from icsd.amp import autocast
from icsd.config import Config
from icsd.data.annotations import Split
from icsd.data.build import load_eval_splits
from icsd.data.caches import SplitInputs, input_caches
from icsd.data.datasets import EvalImages, EvalTexts
from icsd.data.loaders import Loader
from icsd.data.pixels import PixelTransform
from icsd.distributed import DistEnv, all_gather_objects
from icsd.metrics import fold_metrics, recall_metrics
from icsd.models import ICSDModel, build_model_for

logger = logging.getLogger(__name__)

METRIC_ORDER = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "rsum")


@torch.no_grad()
def encode_in_batches(encode: Callable, dataset, batch_size: int, env: DistEnv, num_workers: int,
                      precision: str) -> torch.Tensor:
    """Encode ``dataset`` in consecutive fixed batches; batch k runs on rank k % world_size, so every
    batch (and so every PDM mix) is the same as in a single process. Returns all rows in order, on CPU."""
    num_batches = math.ceil(len(dataset) / batch_size)
    mine = list(range(env.rank, num_batches, env.world_size))
    batches = [list(range(k * batch_size, min((k + 1) * batch_size, len(dataset)))) for k in mine]
    loader = Loader(dataset, batch_sampler=batches, num_workers=num_workers,
                        pin_memory=env.device.type == "cuda")
    encoded = {}
    for k, batch in zip(mine, loader):
        with autocast(precision, env.device):
            encoded[k] = encode(batch.to(env.device, non_blocking=True))[1].float().cpu()
    if env.distributed:
        for part in all_gather_objects(encoded):
            encoded.update(part)
    return torch.cat([encoded[k] for k in range(num_batches)])


@torch.no_grad()
def encode_split(model: ICSDModel, split: Split, pixels: PixelTransform, tokenizer: Callable, cfg: Config,
                 env: DistEnv, inputs: Optional[SplitInputs] = None) -> tuple[torch.Tensor, torch.Tensor, EvalTexts]:
    """Head features of the split's images and captions, on CPU, in evaluation's order (``EvalTexts``:
    captions grouped by image; its ``txt2img`` and ``order`` describe the caption rows); read from the
    split's caches (``inputs``) when given."""
    model.eval()
    workers, precision = cfg.data.num_workers, cfg.train.precision
    inputs = inputs or SplitInputs()
    texts = EvalTexts(split, tokenizer, inputs.tokens)
    f_img = encode_in_batches(lambda images: model.encode_image(pixels.normalize(images)),
                              EvalImages(split, pixels.host, inputs.images), cfg.eval.image_batch_size, env, workers,
                              precision)
    f_txt = encode_in_batches(model.encode_text, texts, cfg.eval.text_batch_size, env, workers, precision)
    return f_img, f_txt, texts


@torch.no_grad()
def evaluate_split(model: ICSDModel, split: Split, pixels: PixelTransform, tokenizer: Callable, cfg: Config,
                   env: DistEnv, inputs: Optional[SplitInputs] = None) -> dict[str, float]:
    """Recall@K of ``split``; for a split of ``eval.folds_when_images`` images (COCO 5K test) also the mean
    over folds of ``eval.fold_size`` images (COCO 1K test), as ``1k_*``."""
    f_img, f_txt, texts = encode_split(model, split, pixels, tokenizer, cfg, env, inputs)
    # Ranked in chunks of queries on the device: the full score matrix is never built (docs/evaluation.md).
    f_img, f_txt, txt2img = f_img.to(env.device), f_txt.to(env.device), texts.txt2img.to(env.device)
    chunk = cfg.eval.rank_chunk_size
    metrics = recall_metrics(f_img, f_txt, txt2img, chunk)
    if split.num_images == cfg.eval.folds_when_images:
        prefix = "1k" if cfg.eval.fold_size == 1000 else f"fold{cfg.eval.fold_size}"
        folds = fold_metrics(f_img, f_txt, txt2img, cfg.eval.fold_size, chunk, split.file_order)
        metrics.update({f"{prefix}_{k}": v for k, v in folds.items()})
    return metrics


@dataclass
class Evaluator:
    """The evaluated splits with what encoding them needs."""

    splits: dict[str, Split]
    pixels: PixelTransform
    tokenizer: Callable
    inputs: dict[str, SplitInputs] = field(default_factory=dict)  # the splits' caches, by name

    def evaluate(self, model: ICSDModel, cfg: Config, env: DistEnv) -> dict[str, dict[str, float]]:
        return {name: evaluate_split(model, split, self.pixels, self.tokenizer, cfg, env, self.inputs.get(name))
                for name, split in self.splits.items()}


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"val": {"r_mean": x}}`` -> ``{"val_r_mean": x}`` (the log's keys)."""
    return {f"{split}_{k}": v for split, metrics in results.items() for k, v in metrics.items()}


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A readable Recall@K table, one row per split (and per fold result such as COCO 1K)."""
    if not results:
        return "(no split evaluated)"
    rows = []
    for split, metrics in results.items():
        rows.append((split, metrics))
        for prefix in sorted(k[:-len("_rsum")] for k in metrics if k.endswith("_rsum")):  # fold results
            rows.append((f"{split} ({prefix})", {k[len(prefix) + 1:]: v for k, v in metrics.items()
                                                 if k.startswith(prefix + "_")}))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'split':<{width}} " + " ".join(f"{k:>8}" for k in METRIC_ORDER)]
    for name, metrics in rows:
        lines.append(f"{name:<{width}} " + " ".join(f"{metrics[k]:8.2f}" for k in METRIC_ORDER))
    return "\n".join(lines)


def run_evaluation(cfg: Config, env: DistEnv, weights: Optional[dict], splits, source: str = "checkpoint"
                   ) -> dict[str, dict[str, float]]:
    """Evaluate the model with ``weights`` (a checkpoint's ``model`` state; None: the configured
    pretrained weights) on ``splits`` and the config's ``eval.extra`` datasets, print the table and return the
    metrics by split (an extra dataset's under its name)."""
    eval_splits = load_eval_splits(cfg, list(splits))
    model, backbone = build_model_for(cfg, env, weights, source)
    inputs = input_caches(cfg.data, {n: eval_splits[n] for n in splits}, backbone, env)  # not the extra datasets'
    results = Evaluator(eval_splits, backbone.pixels, backbone.tokenizer, inputs).evaluate(model, cfg, env)
    logger.info(format_table(results))
    return results
