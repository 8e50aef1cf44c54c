"""The prepared image cache (``data.image_root``, built by ``python -m icsd.prep resize``): where a record's
prepared image lives, and the check that every image of a split has one.

The cache mirrors each image's path relative to ``data.root`` (an absolute path outside the root is
mirrored whole), so ``image_root/<relative image_path>`` is the prepared copy of ``root/<image_path>``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from icsd.config import DataConfig
from icsd.data.annotations import Split
from icsd.errors import DataError


def relative_image_path(image_path: str, data_root: str) -> str:
    """The path the cache stores ``image_path`` under (``image_path`` as ``load_split`` resolved it)."""
    rel = os.path.relpath(os.path.abspath(image_path), os.path.abspath(data_root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        rel = os.path.abspath(image_path).lstrip(os.sep)
    return rel


def cache_root(data: DataConfig) -> Optional[str]:
    """``data.image_root`` resolved against ``data.root`` (as every data path), or None."""
    return os.path.join(data.root, data.image_root) if data.image_root else None


def with_prepared_images(split: Split, image_root: str, data_root: str) -> Split:
    """``split`` reading its images from the cache; every prepared image must exist (checked now, so a
    missing one stops the run before training, as a missing original does in ``load_split``)."""
    if not os.path.isdir(image_root):
        what = "is a file, not a folder" if os.path.exists(image_root) else "not found"
        raise DataError(f"data.image_root: the prepared image cache {image_root} {what} (build it with `python -m "
                        f"icsd.prep resize`, or set data.image_root: null to read the original images)")
    paths = [os.path.join(image_root, relative_image_path(p, data_root)) for p in split.image_paths]
    for image_id, path in zip(split.image_ids, paths):
        if not os.path.isfile(path):
            raise DataError(f"{split.annotation_file}: prepared image of image_id {image_id!r} not found: {path} "
                            f"(data.image_root is {image_root}; build the cache with `python -m icsd.prep resize "
                            f"--root {data_root} --out {image_root} --splits {split.name} --size N`, or set "
                            f"data.image_root: null to read the original images)")
    return dataclasses.replace(split, image_paths=paths)
