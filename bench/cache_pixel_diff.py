"""Measure: how far the prepared image cache moves the model's input pixels (docs/benchmarks.md).

    .venv/bin/python bench/cache_pixel_diff.py                  # dataset_example's 100 images
    .venv/bin/python bench/cache_pixel_diff.py --qualities 85 95 100

For every image of --images (default: dataset_example/pics, real COCO photos), the model's input tensor is
built twice with the model's own eval transform (open_clip: bicubic resize of the shorter side, centre crop,
normalise): from the original JPEG (full decode, what evaluation does) and from its prepared copy
(icsd.tools.prep.resize: shorter side resized to the model's input size with PIL bicubic, saved as JPEG at the
row's quality, then decoded). One table, one row per (model, quality):

  model           open_clip model (random init; only its transform matters): the tiny test model (64 px)
                  and ViT-B-32 (224 px)
  input           the model's input size in pixels (= the cache's shorter side)
  quality         JPEG quality of the cache
  mean_abs_diff   mean |original input - cached input| over all pixels, channels and images, in 8-bit
                  pixel units (the normalisation undone: x std x 255)
  p99_abs_diff    99th percentile of the same per-pixel differences
  max_abs_diff    the largest one
  cache_kb        mean size of a cached file (the originals: ~160 KB)
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from icsd.config import ModelConfig
from icsd.data.datasets import load_image
from icsd.models.backbone import build_backbone
from icsd.tools.prep.resize import model_input_size, resize_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pixel_std(transform) -> torch.Tensor:
    normalize = [t for t in transform.transforms if type(t).__name__ == "Normalize"][0]
    return torch.tensor(normalize.std).view(3, 1, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=os.path.join(REPO, "dataset_example", "pics"))
    parser.add_argument("--models", nargs="+", default=[os.path.join(REPO, "configs", "models", "icsd-tiny.json"),
                                                        "ViT-B-32"])
    parser.add_argument("--qualities", type=int, nargs="+", default=[90, 95])
    args = parser.parse_args(argv)
    files = sorted(os.path.join(args.images, f) for f in os.listdir(args.images)
                   if f.lower().endswith((".jpg", ".png")))
    print(f"# {len(files)} images from {args.images}; mean file size "
          f"{statistics.mean(os.path.getsize(f) for f in files) / 1024:.0f} KB")
    print(f"{'model':<12} {'input':>5} {'quality':>7} {'mean_abs_diff':>13} {'p99_abs_diff':>12} {'max_abs_diff':>12} "
          f"{'cache_kb':>8}")
    for model in args.models:
        transform = build_backbone(ModelConfig(clip=model, pretrained=None)).transform
        size = model_input_size(model)
        scale = pixel_std(transform) * 255
        originals = [transform(load_image(f)) for f in files]
        for quality in args.qualities:
            with tempfile.TemporaryDirectory() as out:
                resize_images([(f, os.path.basename(f)) for f in files], out, args.images, size, quality, workers=2)
                diffs = torch.stack([((transform(load_image(os.path.join(out, os.path.basename(f)))) - o) * scale).abs()
                                     for f, o in zip(files, originals)])
                kb = statistics.mean(os.path.getsize(os.path.join(out, os.path.basename(f))) for f in files) / 1024
            name = os.path.splitext(os.path.basename(model))[0]
            print(f"{name:<12} {size:>5} {quality:>7} {diffs.mean().item():>13.2f} "
                  f"{diffs.flatten().quantile(0.99).item() if diffs.numel() < 2 ** 24 else float('nan'):>12.2f} "
                  f"{diffs.max().item():>12.2f} {kb:>8.1f}")


if __name__ == "__main__":
    main()
