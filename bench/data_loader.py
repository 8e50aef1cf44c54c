"""Benchmark: images/s of the training loader by worker count, from the original COCO-size JPEGs, the prepared
JPEG cache (``data.image_root``), and the pixel cache (``data.pixel_cache``) without and with the token cache
(``data.token_cache``) (docs/benchmarks.md).

    .venv/bin/python bench/data_loader.py                        # workers 0 1 2, 512 images, ViT-B-32 transform
    .venv/bin/python bench/data_loader.py --workers 0 4 8 16 --images 2000 --model ViT-L-14-336

Images: --images synthetic 640x480 JPEGs (COCO's usual size) at quality 90, with photo-like content
(smooth colour gradients, blurred shapes and sensor-like noise, so they compress like photos, ~100 KB), written
to a temporary folder with one caption each; or --source DIR to use real images (e.g. dataset_example/pics).
The JPEG cache is built from them with icsd.tools.prep.resize (shorter side = the model's input size, quality
95); the pixel and token caches with icsd.data.caches. Every source is read through the project's training
dataset (icsd.data.datasets.TrainPairs: decode, the geometry of the model's transform to a uint8 tensor,
tokenize, or read the caches' rows; normalisation runs on the device in training, see icsd.data.pixels) under a
DataLoader of batch --batch-size in file order (no sampler, pinning or teacher features). Give each worker
several batches (--images >= 4 x workers x --batch-size): the first batch is excluded from the timing, and the
batches the other workers load alongside it would inflate the rate.
--full-transform times the whole float transform in the workers instead (the pipeline before uint8 loading).

Columns, one row per worker count; rates are images/s per worker (images after the first batch / time after the
first batch, divided by max(workers, 1)), medians over --repeats passes, the sources timed alternately:
  orig, jpeg, pix, pix+tok   the original JPEGs, the JPEG cache, the pixel cache, the pixel and token caches
  jpeg/orig, pix+tok/jpeg, pix+tok/orig   their ratios
  worker_MB        the largest growth of a worker's anonymous memory (RssAnon, not the page cache) over a pass
                   of pix+tok, from after its first batch to its last ones (NaN with 0 workers)
  ceiling          the same DataLoader over items already made (no reading at all): what moving the batches
                   from the workers to the main process costs by itself (the limit of any source with workers)
With CUDA, a last row "gpu dec" gives torchvision.io.decode_jpeg on the GPU (batched, + resize and centre
crop to the input size on the GPU) in images/s for the original files and for the JPEG cache's.
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
from icsd.data.caches import Rows, build_pixel_cache, build_token_cache, token_meta, tokenizer_identity
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


def rss_anon_mb(pid: int) -> float:
    """A process's anonymous resident memory (RssAnon: its own pages, not the page cache of mapped files)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def loader_rate(pairs, workers: int, batch_size: int, memory: bool = False) -> tuple[float, float]:
    """(images/s after the first batch (worker start-up and the first fetch excluded), the largest growth of a
    worker's RssAnon in MB from after the first batch to the end of the pass, NaN unless ``memory``)."""
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False,
                        persistent_workers=False)
    it = iter(loader)
    next(it)
    pids = [w.pid for w in getattr(it, "_workers", [])] if memory else []  # the DataLoader's own worker list
    before = {pid: rss_anon_mb(pid) for pid in pids}
    start, seen, grown = time.perf_counter(), 0, float("nan")
    for k, batch in enumerate(it):
        seen += len(batch["image"])
        if pids and k == len(loader) - 3:  # before the last batches, while every worker is still alive
            grown = max(rss_anon_mb(pid) - before[pid] for pid in pids)
    return seen / (time.perf_counter() - start), grown


class Ready(torch.utils.data.Dataset):
    """Items already made (the tensors of ``pairs[0]``, copied): what the DataLoader itself costs, moving the
    batches from the workers to the main process, with no reading at all."""

    def __init__(self, pairs: TrainPairs):
        self.item, self.count = pairs[0], len(pairs)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        return {k: v.clone() for k, v in self.item.items()}


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
        build_pixel_cache(os.path.join(root, "pixels.npy"), split, backbone.pixels.host, os.cpu_count() or 1)
        build_token_cache(os.path.join(root, "tokens.npy"), split, backbone.tokenizer,
                          token_meta(split, tokenizer_identity(backbone.tokenizer), backbone.clip.context_length))
        pixels, tokens = Rows(os.path.join(root, "pixels.npy")), Rows(os.path.join(root, "tokens.npy"), as_long=True)
        sources = {"orig": TrainPairs(split, transform, backbone.tokenizer),
                   "jpeg": TrainPairs(training_split(data, split), transform, backbone.tokenizer),
                   "pix": TrainPairs(split, transform, backbone.tokenizer, images=pixels),
                   "pix+tok": TrainPairs(split, transform, backbone.tokenizer, images=pixels, tokens=tokens)}
        ceiling_source = Ready(sources["pix+tok"])
        kb = {k: statistics.mean(os.path.getsize(p) for p in sources[k].split.image_paths) / 1024
              for k in ("orig", "jpeg")}
        print(f"# {args.images} images ({'from ' + args.source if args.source else 'synthetic 640x480, q90'}, "
              f"{kb['orig']:.0f} KB) vs the JPEG cache (shorter side {size}, q95, {kb['jpeg']:.0f} KB) vs the pixel "
              f"cache ({os.path.getsize(os.path.join(root, 'pixels.npy')) / 2**20:.0f} MB) with and without the "
              f"token cache; {args.model} transform ({'float' if args.full_transform else 'uint8'} images); batch "
              f"{args.batch_size}; {os.cpu_count()} CPUs; images/s per worker")
        print(f"{'workers':>8} {'orig':>9} {'jpeg':>9} {'pix':>9} {'pix+tok':>9} {'jpeg/orig':>10} "
              f"{'pix+tok/jpeg':>13} {'pix+tok/orig':>13} {'worker_MB':>10} {'ceiling':>9}")
        for workers in args.workers:
            rates, grown = {k: [] for k in sources}, float("nan")
            for _ in range(args.repeats):
                for name, pairs in sources.items():  # alternate, so load changes hit all alike
                    rate, memory = loader_rate(pairs, workers, args.batch_size, memory=name == "pix+tok")
                    rates[name].append(rate / max(workers, 1))
                    grown = memory if name == "pix+tok" else grown
            r = {k: statistics.median(v) for k, v in rates.items()}
            ceiling = statistics.median(loader_rate(ceiling_source, workers, args.batch_size)[0] / max(workers, 1)
                                        for _ in range(args.repeats))
            print(f"{workers:>8} {r['orig']:>9.1f} {r['jpeg']:>9.1f} {r['pix']:>9.1f} {r['pix+tok']:>9.1f} "
                  f"{r['jpeg'] / r['orig']:>10.2f} {r['pix+tok'] / r['jpeg']:>13.2f} {r['pix+tok'] / r['orig']:>13.2f} "
                  f"{grown:>10.1f} {ceiling:>9.1f}")
        if torch.cuda.is_available():
            orig = gpu_decode_rate(sources["orig"].split.image_paths, size, args.batch_size)
            cache = gpu_decode_rate(sources["jpeg"].split.image_paths, size, args.batch_size)
            print(f"{'gpu dec':>8} {orig:>9.1f} {cache:>9.1f}  (torchvision.io.decode_jpeg on the GPU, images/s)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
