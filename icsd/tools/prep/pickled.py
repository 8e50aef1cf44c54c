"""Convert a released pickled-dict feature file (``np.save`` of ``{image_id: array (1, D) or (D,)}``)
to the project's layout (float16 ``[N, D]`` ``.npy`` opened with ``mmap_mode="r"`` + sidecar ``ids``).

The dict is unpickled once (the only way to read it); rows are then streamed to disk in small chunks and
each entry is dropped from the dict as soon as it is written, so memory never holds a second copy of
the features (peak = the dict + one chunk). Rows are written sorted by image_id, as ``load_split``
lists images, so training and evaluation read the file in order.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional

import numpy as np

from icsd.data.annotations import load_split
from icsd.data.feature_file import FeatureWriter
from icsd.data.teacher_features import load_image_features, read_pickled_dict
from icsd.errors import DataError

logger = logging.getLogger(__name__)

USAGE = """Convert a released pickled-dict feature file (np.save of {image_id: array (1, D) or (D,)}, e.g.
ICSD/CUSA's Unicom features) to the project's layout: a float16 [N, D] .npy opened with mmap_mode="r"
+ a .meta.json sidecar listing the image_id of each row. Rows are streamed, so memory never holds a
second copy. Run from the repository root:

    python -m icsd.prep convert-pickled released/train_unicom.npy datasets/coco/train_unicom.npy \\
        --annotation datasets/coco/train.json
"""


def _sorted_keys(path: str, data: dict) -> tuple[list, int]:
    """The dict's keys sorted by ``str(image_id)`` and the common dimension D (checked, without copies)."""
    by_id: dict[str, object] = {}
    dim: Optional[int] = None
    for key, value in data.items():
        if str(key) in by_id:
            raise DataError(f"{path}: image_id {str(key)!r} appears twice (as {by_id[str(key)]!r} and {key!r})")
        by_id[str(key)] = key
        size = np.size(value)
        if dim is None:
            dim = size
        elif size != dim:
            raise DataError(f"{path}: feature of image_id {str(key)!r} has {size} values "
                            f"(shape {np.shape(value)}), the others have {dim}")
    if not dim:
        raise DataError(f"{path}: the features are empty (dimension 0)")
    return [by_id[i] for i in sorted(by_id)], dim


def convert_pickled_dict(src: str, dst: str, model: str = "unicom", mode: str = "released",
                         chunk_rows: int = 256, data: Optional[dict] = None) -> int:
    """Write ``src`` in the project's layout at ``dst`` (+ ``dst.meta.json``); returns the row count.

    ``data`` (the already unpickled dict, emptied as it is written) spares reading ``src`` again."""
    data = read_pickled_dict(src) if data is None else data
    keys, dim = _sorted_keys(src, data)
    meta = {"model": model, "mode": mode, "kind": "image", "source": os.path.basename(src),
            "ids": [str(k) for k in keys]}
    writer = FeatureWriter(dst, len(keys), meta, resume=False)
    try:
        for start in range(0, len(keys), chunk_rows):
            chunk = keys[start:start + chunk_rows]
            block = np.empty((len(chunk), dim), dtype=np.float16)
            for row, key in enumerate(chunk):
                block[row] = np.asarray(data.pop(key)).reshape(-1)
            writer.write(block)
    except BaseException:
        writer.close()
        raise
    writer.finish()
    return len(keys)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="the released pickled-dict .npy file")
    parser.add_argument("dst", help="the output .npy (its sidecar is written beside it); not the same file")
    parser.add_argument("--model", default="unicom", help="teacher name recorded in the sidecar (default unicom)")
    parser.add_argument("--mode", default="released", help="feature mode recorded in the sidecar")
    parser.add_argument("--annotation", default=None,
                        help="a split JSON: check that each of its image_ids has a row afterwards")


def run(args: argparse.Namespace) -> None:
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise DataError(f"{args.src}: converting in place would destroy the original; give another dst "
                        f"(move the released file aside first)")
    rows = convert_pickled_dict(args.src, args.dst, args.model, args.mode)
    features = load_image_features(args.dst)
    logger.info(f"{args.src} -> {args.dst}: {rows} rows x {features.dim} (float16)")
    if args.annotation:
        split = load_split("check", args.annotation, os.path.dirname(args.annotation), check_images=False)
        features.rows_for(split.image_ids)
        logger.info(f"all {split.num_images} images of {args.annotation} have a feature")
