"""Benchmark: images/s of the training loader by worker count, original COCO-size JPEGs vs the prepared
image cache (docs/benchmarks.md).

    .venv/bin/python bench/data_loader.py                        # workers 0 1 2, 512 images, ViT-B-32 transform
    .venv/bin/python bench/data_loader.py --workers 0 4 8 16 --images 2000 --model ViT-L-14-336

Images: --images synthetic 640x480 JPEGs (COCO's usual size) at quality 90, with photo-like content
(smooth colour gradients, blurred shapes and sensor-like noise, so they compress like photos, ~100 KB), written
to a temporary folder with one caption each; or --source DIR to use real images (e.g. dataset_example/pics).
The cache is built from them with icsd.tools.prep.resize (shorter side = the model's input size, quality 95).
Both are read through the project's training dataset (icsd.data.datasets.TrainPairs: decode, the geometry
of the model's transform to a uint8 tensor, tokenize; normalisation runs on the device in training, see
icsd.data.pixels; the cached split through icsd.data.build.training_split, as training does) under a
DataLoader of batch --batch-size in file order (no sampler, pinning or teacher features). Give each worker
several batches (--images >= 4 x workers x --batch-size): the first batch is excluded from the timing, and the
batches the other workers decode alongside it would inflate the rate.
--full-transform times the whole float transform in the workers instead (the pipeline before uint8 loading).

Columns, one row per worker count:
  workers          DataLoader num_workers (0 = in the main process)
  orig_img_s       images/s from the original JPEGs: images after the first batch / time after the first
                   batch (worker start-up excluded), median over --repeats passes
  cache_img_s      the same from the prepared cache
  orig_per_worker  orig_img_s / max(workers, 1)
  cache_per_worker cache_img_s / max(workers, 1)
  ratio            cache_img_s / orig_img_s (acceptance: >= 3 per worker on this 2-core machine)
With CUDA, a last row "gpu dec" gives torchvision.io.decode_jpeg on the GPU (batched, + resize and centre
crop to the input size on the GPU) in images/s for the original files, in the orig column (the cache column
repeats it for the cached files). Rates on a shared machine vary: both sources are timed alternately.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader

from icsd.config import DataConfig, ModelConfig
from icsd.data.annotations import load_split
from icsd.data.build import training_split
from icsd.data.datasets import TrainPairs
from icsd.data.image_cache import relative_image_path
from icsd.tools.prep.resize import model_input_size, resize_images


def photo_like(rng: np.random.Generator, width: int = 640, height: int = 480) -> Image.Image:
    """Gradients + blurred ellipses + noise: compresses like a photo (not like flat synthetic colour)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(x / rng.uniform(40, 200) + rng.uniform(0, 6)) * 60 + 128
                     + (y - height / 2) * rng.uniform(-0.2, 0.2)
                     for _ in range(3)], axis=-1)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        draw.ellipse([x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 200)],
                     fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    image = image.filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(image).astype(np.float32) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_dataset(root: str, count: int, source: str | None) -> str:
    """Images under ``root/pics`` and ``root/train.json`` (one caption per image); returns the annotation."""
    os.makedirs(os.path.join(root, "pics"), exist_ok=True)
    records = []
    if source:
        files = sorted(f for f in os.listdir(source) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        for i in range(count):
            name = f"{i:06d}_{files[i % len(files)]}"
            shutil.copy(os.path.join(source, files[i % len(files)]), os.path.join(root, "pics", name))
            records.append({"image_path": f"pics/{name}", "caption": "a photo", "image_id": str(i)})
    else:
        rng = np.random.default_rng(0)
        for i in range(count):
            photo_like(rng).save(os.path.join(root, "pics", f"{i:06d}.jpg"), quality=90)
            records.append({"image_path": f"pics/{i:06d}.jpg", "caption": "a man riding a wave on a surfboard",
                            "image_id": str(i)})
    path = os.path.join(root, "train.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def loader_rate(pairs: TrainPairs, workers: int, batch_size: int) -> float:
    """Images/s after the first batch (worker start-up and the first fetch excluded)."""
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False,
                        persistent_workers=False)
    it = iter(loader)
    next(it)
    start, seen = time.perf_counter(), 0
    for batch in it:
        seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def gpu_decode_rate(paths: list[str], size: int, batch_size: int) -> float:
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as F

    def one_pass():
        for i in range(0, len(paths), batch_size):
            datas = [read_file(p) for p in paths[i:i + batch_size]]
            images = decode_jpeg(datas, device="cuda")
            [F.center_crop(F.resize(im, size, antialias=True), size) for im in images]
        torch.cuda.synchronize()

    one_pass()  # warm-up (CUDA context, nvjpeg)
    start = time.perf_counter()
    one_pass()
    return len(paths) / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers values")
    parser.add_argument("--images", type=int, default=512, help="images per pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model whose transform and input size are used")
    parser.add_argument("--source", default=None, help="a folder of real images instead of synthetic ones")
    parser.add_argument("--repeats", type=int, default=3, help="passes per (source, workers); median")
    parser.add_argument("--full-transform", action="store_true",
                        help="ToTensor + Normalize in the workers (float images) instead of uint8 images")
    parser.add_argument("--keep", default=None, help="write the data here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)

    from icsd.models.backbone import build_backbone

    backbone = build_backbone(ModelConfig(clip=args.model, pretrained=None))
    size = model_input_size(args.model)
    root = args.keep or tempfile.mkdtemp(prefix="icsd_loader_bench_")
    try:
        annotation = write_dataset(root, args.images, args.source)
        split = load_split("train", annotation, root)
        data = DataConfig(root=root, image_root="cache_images")
        resize_images([(p, relative_image_path(p, root)) for p in split.image_paths],
                      os.path.join(root, "cache_images"), root, size, workers=os.cpu_count() or 1)
        transform = backbone.transform if args.full_transform else backbone.pixels.host
        sources = {"orig": TrainPairs(split, transform, backbone.tokenizer),
                   "cache": TrainPairs(training_split(data, split), transform, backbone.tokenizer)}
        kb = {k: statistics.mean(os.path.getsize(p) for p in pairs.split.image_paths) / 1024
              for k, pairs in sources.items()}
        print(f"# {args.images} images ({'from ' + args.source if args.source else 'synthetic 640x480, q90'}, "
              f"{kb['orig']:.0f} KB) vs cache (shorter side {size}, q95, {kb['cache']:.0f} KB); {args.model} "
              f"transform ({'float' if args.full_transform else 'uint8'} images); batch {args.batch_size}; "
              f"{os.cpu_count()} CPUs")
        print(f"{'workers':>8} {'orig_img_s':>11} {'cache_img_s':>12} {'orig_per_worker':>16} "
              f"{'cache_per_worker':>17} {'ratio':>6}")
        for workers in args.workers:
            rates = {k: [] for k in sources}
            for _ in range(args.repeats):
                for name, pairs in sources.items():  # alternate, so load changes hit both alike
                    rates[name].append(loader_rate(pairs, workers, args.batch_size))
            orig, cache = statistics.median(rates["orig"]), statistics.median(rates["cache"])
            per = max(workers, 1)
            print(f"{workers:>8} {orig:>11.1f} {cache:>12.1f} {orig / per:>16.1f} {cache / per:>17.1f} "
                  f"{cache / orig:>6.2f}")
        if torch.cuda.is_available():
            orig = gpu_decode_rate(sources["orig"].split.image_paths, size, args.batch_size)
            cache = gpu_decode_rate(sources["cache"].split.image_paths, size, args.batch_size)
            print(f"{'gpu dec':>8} {orig:>11.1f} {cache:>12.1f} {'-':>16} {'-':>17} {cache / orig:>6.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
