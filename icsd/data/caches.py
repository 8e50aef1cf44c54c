"""Exact, decode-free input: the pixel cache and the token cache of a split, built on first use.

The training transform is deterministic (resize, centre crop), so a split's images can be decoded once: the
pixel cache (``data.pixel_cache``) holds every image once, as the uint8 ``[3, S, S]`` tensor the loader's host
transform gives (``icsd.data.pixels``), in one ``[N, 3, S, S]`` ``.npy`` file; the token cache
(``data.token_cache``) holds every caption's tokens, int32 ``[captions, context_length]``. A step then reads rows
(``os.pread`` of exactly their bytes, as the teacher features: the workers' memory stays flat) instead of
decoding JPEGs and tokenizing: the same batches, bit for bit.

Each file has a sidecar (``icsd.data.feature_file``'s format) recording what it was made from: the pixel
cache the image ids, the source files with their sizes and modification times, the transform, and the Pillow
and torchvision versions (the resize's exact output depends on them); the token cache the tokenizer, its
context length, the open_clip version and the captions' fingerprint. A cache that no longer matches is refused
with what changed and how to rebuild it.

A missing cache is built before training (and before evaluation) by the main rank, the images decoded in
parallel over ``data.num_workers`` processes, resumably and atomically (``FeatureWriter``: a partial file and
its progress, renamed when complete); the free disk space is checked first; a lease (``<cache>.lock``) makes a
second run that needs the same cache wait for the first instead of building it too.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from icsd.config import DataConfig
from icsd.data.annotations import Split
from icsd.data.captions import caption_fingerprint
from icsd.data.datasets import load_image
from icsd.data.feature_file import FeatureWriter, MatrixRows, is_complete, is_written, meta_path, read_meta
from icsd.data.loaders import Loader
from icsd.errors import DataError, ImageReadError
from icsd.lease import Lease, LeaseHeld

logger = logging.getLogger(__name__)

WAIT_SECONDS = 5.0  # between looks at a cache another run is building


class Rows:
    """A cache's rows as tensors (``rows(i)``), read one at a time with ``os.pread`` (``MatrixRows``)."""

    def __init__(self, path: str, as_long: bool = False):
        self.matrix = MatrixRows(path)
        self.as_long = as_long

    def __len__(self) -> int:
        return len(self.matrix)

    def __call__(self, index: int) -> torch.Tensor:
        row = torch.from_numpy(np.array(self.matrix[index]))  # a writable copy of the bytes read
        return row.long() if self.as_long else row


# ----------------------------------------------------------------------------------------------------
# What a cache was made from
# ----------------------------------------------------------------------------------------------------
def pixel_meta(split: Split, host_transform) -> dict:
    import PIL
    import torchvision

    folder, sources = os.path.dirname(split.annotation_file), []
    for path in split.image_paths:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DataError(f"{split.annotation_file}: cannot read image {path} ({exc.strerror})") from None
        # relative to the split's folder: the same cache whether data.root is given relative or absolute
        sources.append([os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns])
    return {"kind": "pixels", "ids": list(split.image_ids), "sources": sources,
            "transform": " ".join(repr(host_transform).split()),  # one line: resize, crop and their settings
            "pillow": PIL.__version__, "torchvision": torchvision.__version__}


def token_meta(split: Split, tokenizer_name: str, context_length: int) -> dict:
    import open_clip

    return {"kind": "tokens", "tokenizer": tokenizer_name, "context_length": int(context_length),
            "open_clip": open_clip.__version__, "fingerprint": caption_fingerprint(split.captions)}


def _what_changed(found: dict, wanted: dict) -> str:
    if found.get("kind") != wanted["kind"]:
        return f"it is a {found.get('kind')} file, not a {wanted['kind']} cache"
    if wanted["kind"] == "tokens":
        for key, what in (("tokenizer", "tokenizer"), ("context_length", "context length"),
                          ("open_clip", "open_clip version"), ("fingerprint", "captions")):
            if found.get(key) != wanted[key]:
                return f"its {what} differ{'s' if key != 'fingerprint' else ''} ({found.get(key)} -> {wanted[key]})"
        return "it does not match"
    if found.get("ids") != wanted["ids"]:
        return "it holds other images (image ids)"
    if found.get("transform") != wanted["transform"]:
        return f"it was made with another transform ({found.get('transform')}; now {wanted['transform']})"
    pairs = list(zip(found.get("sources", []), wanted["sources"]))
    changed = [new[0] for old, new in pairs if old[1:] != new[1:]]
    if changed:
        return f"{len(changed)} image(s) changed since (size or modification time), first {changed[0]}"
    moved = [(old[0], new[0]) for old, new in pairs if old[0] != new[0]]
    if moved:
        return f"it lists its images under other paths (first {moved[0][0]}, now {moved[0][1]})"
    return (f"it was made with other library versions (Pillow {found.get('pillow')}, torchvision "
            f"{found.get('torchvision')}; now {wanted['pillow']}, {wanted['torchvision']}), whose resize can differ")


def check_cache(path: str, meta: dict, rows: int, key: str) -> None:
    """A complete cache of exactly this job, or a DataError saying what changed and how to rebuild."""
    if is_complete(path, meta, rows):
        return
    found = read_meta(path) or {}
    raise DataError(f"{key}: the cache {path} no longer matches: {_what_changed(found, meta)}. Rebuild it: remove "
                    f"{path} and {meta_path(path)} (the next run builds it), or run python -m icsd.prep "
                    f"{'pixels' if meta['kind'] == 'pixels' else 'tokens'} --config ... --overwrite")


# ----------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------
class _Decoded(Dataset):
    """Images ``start..`` of a split through the host transform (uint8 [3, S, S]); an unreadable one is named."""

    def __init__(self, paths: Sequence[str], host_transform: Callable):
        self.paths, self.host = list(paths), host_transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.host(load_image(self.paths[index]))


def _check_space(path: str, rows: int, row_bytes: int, done: int, alternative: str = "") -> None:
    folder = os.path.dirname(os.path.abspath(path))
    needed = (rows - done) * row_bytes
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(f"building {path} needs {needed / 1e9:.2f} GB ({rows:,} rows x {row_bytes:,} bytes), "
                        f"{folder} has {free / 1e9:.2f} GB free: free space, or set the cache's pattern to a "
                        f"bigger disk{alternative}")


def build_pixel_cache(path: str, split: Split, host_transform, num_workers: int = 0, batch_size: int = 64,
                      overwrite: bool = False) -> None:
    """Decode every image of ``split`` through ``host_transform`` into ``path`` (resumable, atomic)."""
    meta = pixel_meta(split, host_transform)
    if not overwrite and is_complete(path, meta, split.num_images):
        return
    try:
        sample = host_transform(load_image(split.image_paths[0]))  # the row size, before any file is made
    except ImageReadError as exc:
        raise DataError(f"building {path}: {exc}") from None
    writer = FeatureWriter(path, split.num_images, meta, dtype=np.uint8, resume=not overwrite)
    _check_space(path, split.num_images, sample.numel(), writer.rows_done,
                 ", or use data.image_root instead (the JPEG cache: about 8x smaller, not exact)")
    loader = Loader(_Decoded(split.image_paths[writer.rows_done:], host_transform), batch_size=batch_size,
                    num_workers=num_workers)
    logger.info(f"building the pixel cache {path}: {split.num_images} images of {split.name} "
                f"({split.num_images * sample.numel() / 1e9:.2f} GB, {num_workers} workers, once)")
    try:
        with torch.random.fork_rng(devices=[]):  # the loader draws its workers' seed: a run that builds the
            for batch in loader:                 # cache goes on with the same random stream as one that finds it
                writer.write(batch.numpy())
    except ImageReadError as exc:
        writer.close()
        raise DataError(f"building {path}: {exc}") from None
    except BaseException:
        writer.close()  # the rows written so far are kept: the next run continues
        raise
    finally:
        loader.close()
    writer.finish()


def build_token_cache(path: str, split: Split, tokenizer, meta: dict, batch_size: int = 4096,
                      overwrite: bool = False) -> None:
    """Every caption of ``split`` tokenized into ``path`` (int32 rows)."""
    if not overwrite and is_complete(path, meta, split.num_captions):
        return
    writer = FeatureWriter(path, split.num_captions, meta, dtype=np.int32, resume=not overwrite)
    _check_space(path, split.num_captions, 4 * tokenizer(split.captions[:1]).shape[1], writer.rows_done)
    try:
        for start in range(writer.rows_done, split.num_captions, batch_size):
            writer.write(tokenizer(split.captions[start:start + batch_size]).numpy())
    except BaseException:
        writer.close()
        raise
    writer.finish()


def _ensure(path: str, meta: dict, rows: int, key: str, build: Callable[[], None], overwrite: bool = False) -> None:
    """The cache at ``path``: a complete one of this job is used as it is (without a lease: the data folder may be
    read-only), one of another job is refused (``check_cache``), a missing one (or any, with ``overwrite``) is
    built under the cache's lease; while another run holds the lease, wait (one line) and use what it built."""
    if is_written(path) and not overwrite:
        return check_cache(path, meta, rows, key)
    lease, said = Lease(path + ".lock"), False
    while True:
        try:
            lease.acquire()
            break
        except LeaseHeld as held:
            if not said:
                logger.info(f"waiting for {path}: {held.holder.describe()} is building it")
                said = True
            time.sleep(WAIT_SECONDS)
        except OSError as exc:
            raise DataError(f"{key}: cannot build {path}: cannot create {path}.lock ({exc.strerror}); build the "
                            f"cache where the folder is writable (python -m icsd.prep), or set {key} to null") from None
    try:
        if overwrite:
            for stale in (path, meta_path(path)):
                if os.path.exists(stale):
                    os.remove(stale)
        if is_written(path):
            check_cache(path, meta, rows, key)  # the run we waited for built it
        else:
            build()
    finally:
        lease.release()


# ----------------------------------------------------------------------------------------------------
# What training and evaluation call
# ----------------------------------------------------------------------------------------------------
def cache_path(data: DataConfig, pattern: Optional[str], split: Split) -> Optional[str]:
    return None if pattern is None else os.path.join(data.root, pattern.format(split=split.name))


def pixel_rows(data: DataConfig, split: Split, host_transform, build: bool = True,
               overwrite: bool = False) -> Optional[Rows]:
    """``split``'s pixel cache (``data.pixel_cache``), built when missing (``build``), checked; None when unset."""
    path = cache_path(data, data.pixel_cache, split)
    if path is None:
        return None
    meta = pixel_meta(split, host_transform)
    if build:
        _ensure(path, meta, split.num_images, "data.pixel_cache",
                lambda: build_pixel_cache(path, split, host_transform, data.num_workers), overwrite)
    else:
        check_cache(path, meta, split.num_images, "data.pixel_cache")
    return Rows(path)


def tokenizer_identity(tokenizer) -> str:
    """What the token cache is keyed by: the tokenizer's class and a digest of what it makes of a probe text
    (another vocabulary, casing or cleaning changes it), so models that share a tokenizer share the cache."""
    import hashlib

    probe = ["A man riding a wave on top of a surfboard.", "TWO dogs & 3 cats, café naïve; émigré!? 1,234"]
    digest = hashlib.sha256(np.ascontiguousarray(tokenizer(probe).numpy(), dtype=np.int64).tobytes()).hexdigest()
    return f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}:{digest[:16]}"


def token_rows(data: DataConfig, split: Split, tokenizer, context_length: int, build: bool = True,
               overwrite: bool = False) -> Optional[Rows]:
    """``split``'s token cache (``data.token_cache``), built when missing, checked; None when unset."""
    path = cache_path(data, data.token_cache, split)
    if path is None:
        return None
    meta = token_meta(split, tokenizer_identity(tokenizer), context_length)
    if build:
        _ensure(path, meta, split.num_captions, "data.token_cache",
                lambda: build_token_cache(path, split, tokenizer, meta), overwrite)
    else:
        check_cache(path, meta, split.num_captions, "data.token_cache")
    return Rows(path, as_long=True)


@dataclass
class SplitInputs:
    """A split's image and token sources from the caches (None: decode / tokenize)."""

    images: Optional[Rows] = None
    tokens: Optional[Rows] = None


def input_caches(data: DataConfig, splits: dict[str, Split], backbone, env) -> dict[str, SplitInputs]:
    """The caches of ``splits`` (``data.pixel_cache``, ``data.token_cache``): the main rank builds the missing
    ones while the other ranks wait (and stop with it if the build fails), then every rank opens them, checked."""
    from icsd.distributed import run_on_main

    if not (data.pixel_cache or data.token_cache):
        return {}

    def opened(build: bool) -> dict[str, SplitInputs]:
        return {name: SplitInputs(pixel_rows(data, split, backbone.pixels.host, build),
                                  token_rows(data, split, backbone.tokenizer, backbone.clip.context_length, build))
                for name, split in splits.items()}

    on_main: dict[str, SplitInputs] = {}
    run_on_main(env, lambda: on_main.update(opened(build=True)), "building the input caches")
    return on_main if env.is_main else opened(build=False)
