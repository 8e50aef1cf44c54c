"""Prepare a resized image cache for training (``data.image_root``).

Every image of the chosen splits is decoded once, its shorter side resized to --size (bicubic, as the
CLIP transform), and saved as JPEG at --quality under --out, mirroring its path relative to the data root
(the file is a JPEG whatever its extension). The training loader then decodes a ~224x298 JPEG instead of a
640x480 one and skips the big resize. --size must be >= the model's input size (224 for ViT-B/32, 336 for
ViT-L/14@336): the training transform still resizes and centre-crops to the input size. Images already
smaller than --size are re-encoded at their size, never enlarged.

Parallel (--workers processes) and resumable: an image whose output exists with the expected size is
skipped; outputs are written to a temporary file and renamed. ``manifest.json`` in --out records the
source root, size, quality and every prepared image (relative path -> [width, height]).

    python -m icsd.prep resize --config configs/vitb32/coco/icsd.yaml --out datasets/coco/images_224
    python -m icsd.prep resize --root datasets/coco --splits train --size 336 --out /scratch/coco_336
then train with --opts data.image_root=images_224 (relative to data.root, or an absolute path).
"""
from __future__ import annotations

import argparse
import json
import os
from multiprocessing import get_context
from typing import Optional

from PIL import Image

from icsd.errors import ConfigError, DataError
from icsd.files import read_json, write_text
from icsd.tools.prep.common import add_data_arguments, resolve_data_arguments

USAGE = __doc__
MANIFEST = "manifest.json"
DEFAULT_QUALITY = 95


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size``, the longer one as torchvision's Resize(size) computes
    it (``int(size * long / short)``); an image already smaller is kept at its size."""
    short, long = min(width, height), max(width, height)
    if short <= size:
        return width, height
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def is_prepared(path: str, expected: tuple[int, int]) -> bool:
    """A finished output: it decodes fully to an image of the expected size (a torn or foreign file does not)."""
    try:
        with Image.open(path) as image:
            image.load()  # a file cut after its header opens, and fails only here
            return image.size == expected
    except (OSError, ValueError):
        return False


def prepare_image(src: str, dst: str, size: int, quality: int) -> tuple[str, Optional[tuple[int, int]], str]:
    """Resize ``src`` into ``dst`` unless already there: (dst, (width, height), "done" | "skipped"), or
    (dst, None, error message)."""
    try:
        with Image.open(src) as image:
            expected = target_size(*image.size, size)
            if is_prepared(dst, expected):
                return dst, expected, "skipped"
            image = image.convert("RGB")
            if image.size != expected:
                image = image.resize(expected, Image.BICUBIC)
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        tmp = f"{dst}.{os.getpid()}.tmp"
        image.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, dst)  # a kill leaves no torn output under the final name (not synced: is_prepared
        # decodes every file again on the next run, so even a power cut costs a redo, never a torn input)
        return dst, expected, "done"
    except (OSError, ValueError) as exc:
        return dst, None, f"cannot prepare {src}: {exc}"


def _prepare_job(job: tuple[str, str, int, int]):
    return prepare_image(*job)


def check_manifest(out: str, size: int, quality: int) -> dict:
    """The cache's existing manifest (empty for a new cache); a cache made with other settings is refused,
    so a resumed run never mixes two sizes."""
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        return {}
    manifest = read_json(path, "cache manifest", DataError)
    if (manifest.get("size"), manifest.get("quality")) != (size, quality):
        raise ConfigError(f"{out} holds a cache made with size {manifest.get('size')} and quality "
                          f"{manifest.get('quality')}, not {size} and {quality}: choose another --out or "
                          f"the same settings")
    return manifest


def write_manifest(out: str, manifest: dict) -> None:
    write_text(os.path.join(out, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True), "cache manifest")


def resize_images(images: list[tuple[str, str]], out: str, source_root: str, size: int,
                  quality: int = DEFAULT_QUALITY, workers: int = 1, progress: bool = False) -> dict:
    """Prepare ``images`` (pairs of source path and path relative to ``out``); returns the manifest written.
    Every image is attempted; unreadable ones are reported together at the end (DataError)."""
    if size < 1 or not 1 <= quality <= 100:
        raise ConfigError(f"--size must be >= 1 and --quality in 1..100, got {size} and {quality}")
    os.makedirs(out, exist_ok=True)
    manifest = check_manifest(out, size, quality)
    prepared = dict(manifest.get("images", {}))
    jobs = [(src, os.path.join(out, rel), size, quality) for src, rel in images]
    rel_of = {os.path.join(out, rel): rel for _, rel in images}
    counts, errors = {"done": 0, "skipped": 0}, []
    if workers > 1:
        pool = get_context("spawn").Pool(workers)  # no fork: safe under a parent holding threads
        results = pool.imap_unordered(_prepare_job, jobs, chunksize=16)
    else:
        pool, results = None, map(_prepare_job, jobs)
    try:
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc="resize", dynamic_ncols=True)
        for dst, dims, status in results:
            if dims is None:
                errors.append(status)
                continue
            counts[status] += 1
            prepared[rel_of[dst]] = list(dims)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    manifest = {"source_root": os.path.abspath(source_root), "size": size, "quality": quality,
                "resample": "bicubic", "format": "JPEG", "count": len(prepared), "images": prepared,
                "last_run": {**counts, "failed": len(errors)}}
    write_manifest(out, manifest)
    if errors:
        raise DataError(f"{len(errors)} image(s) could not be prepared (the others are done; rerun to resume): "
                        + "; ".join(errors[:3]))
    return manifest


def model_input_size(clip: str) -> Optional[int]:
    """The image size of an open_clip model name or model-config JSON, if known."""
    import open_clip

    from icsd.models.backbone import resolve_model_name

    config = open_clip.get_model_config(resolve_model_name(clip)) or {}
    size = config.get("vision_cfg", {}).get("image_size")
    return int(size if isinstance(size, int) else max(size)) if size else None


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, "--out", "output root of the cache (default: the config's data.image_root, "
                                        "relative to the data root)")
    parser.set_defaults(splits=["train"])
    parser.add_argument("--size", type=int, default=None,
                        help="shorter side in pixels, >= the model's input size (default: the --config "
                             "model's input size, e.g. 224 for ViT-B-32, 336 for ViT-L-14-336)")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality 1..100")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> None:
    from icsd.data.annotations import load_split
    from icsd.data.image_cache import relative_image_path

    from_config_out = args.out is None
    resolve_data_arguments(args, "image_root")
    if args.out is None:
        raise ConfigError("--out is required (or a --config whose data.image_root is set)")
    out = os.path.join(args.root, args.out) if from_config_out else args.out
    size = args.size
    if args.config:
        from icsd.config import load_config

        needed = model_input_size(load_config(args.config).model.clip)
        if size is None:
            size = needed
        elif needed is not None and size < needed:
            raise ConfigError(f"--size {size} is below the input size of the config's model ({needed}): the "
                              f"training transform would enlarge the cached images")
    if size is None:
        raise ConfigError("--size is required (or a --config whose model has a known input size)")
    images: dict[str, str] = {}
    for split in args.splits:
        path = os.path.join(args.root, args.annotation.format(split=split))
        data = load_split(split, path, args.root, args.max_words)
        for src in data.image_paths:
            images[src] = relative_image_path(src, args.root)
    manifest = resize_images(sorted(images.items()), out, args.root, size, args.quality, args.workers,
                             progress=not args.no_progress)
    run_stats = manifest["last_run"]
    print(f"{out}: {manifest['count']} images at shorter side {size}, quality {args.quality} "
          f"({run_stats['done']} written, {run_stats['skipped']} already done)")
