"""Records of the project's split JSONs from ALBEF-style annotation files (``coco_train.json``,
``coco_test.json``, ``flickr30k_val.json``, ...):

- train files: ``[{"image": "val2014/x.jpg", "caption": "...", "image_id": "coco_522418"}, ...]``;
- val/test files: ``[{"image": "val2014/y.jpg", "caption": ["...", "...", ...]}, ...]``.

Either shape is accepted in any file: a list caption gives one record per caption, and a record without
``image_id`` gets one from its image file name (``y.jpg``, or ``y`` with ``id_style="stem"``). The image
path is ``<image_dir>/<image>``.
"""
from __future__ import annotations

import argparse
import logging

from icsd.data.annotations import read_records
from icsd.errors import ConfigError, DataError
from icsd.tools.prep.common import add_split_output_arguments
from icsd.tools.prep.split_writer import image_id_of, image_path_of, write_splits

logger = logging.getLogger(__name__)

USAGE = """Split JSONs (one {image_path, caption, image_id} record per caption) from ALBEF-style annotation
files, after checking that every image exists. Train records {image, caption, image_id}; val/test records
{image, caption: [...]} whose image_id is taken from the image file name. Run from the repository root:

    python -m icsd.prep albef --root datasets/coco --images images \\
        --train ann/coco_train.json --val ann/coco_val.json --test ann/coco_test.json
    python datasets/prepare_albef.py --root datasets/flickr30k --images . \\
        --train ann/flickr30k_train.json --val ann/flickr30k_val.json --test ann/flickr30k_test.json
"""
SPLITS = ("train", "val", "test")


def albef_records(path: str, image_dir: str = "", id_style: str = "filename") -> list[dict]:
    """The ``{image_path, caption, image_id}`` records of one ALBEF-style file, in file order."""
    records: list[dict] = []
    for i, entry in enumerate(read_records(path)):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: record {i} is not an object")
        missing = [k for k in ("image", "caption") if k not in entry]
        if missing:
            raise DataError(f"{path}: record {i} has no field {', '.join(repr(m) for m in missing)}")
        if not isinstance(entry["image"], str) or not entry["image"]:
            raise DataError(f"{path}: record {i} has no image file name: {entry['image']!r}")
        captions = entry["caption"]
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise DataError(f"{path}: record {i} ({entry['image']}): 'caption' must be a string or a "
                            f"non-empty list of strings, got {entry['caption']!r}")
        image_id = entry.get("image_id")
        image_id = image_id_of(entry["image"], id_style) if image_id is None else str(image_id)
        image_path = image_path_of(image_dir, entry["image"])
        records.extend({"image_path": image_path, "caption": c.strip(), "image_id": image_id} for c in captions)
    return records


def configure(parser: argparse.ArgumentParser) -> None:
    for split in SPLITS:
        parser.add_argument(f"--{split}", default=None, help=f"ALBEF-style {split} file")
    add_split_output_arguments(parser, "folder under the root that the files' 'image' paths are relative to",
                               "image_id of records without one: the image file name (default) or its stem")


def run(args: argparse.Namespace) -> None:
    sources = {s: getattr(args, s) for s in SPLITS if getattr(args, s)}
    if not sources:
        raise ConfigError("give at least one of --train, --val, --test")
    splits = {name: albef_records(path, args.images, args.id_style) for name, path in sources.items()}
    written = write_splits(splits, args.root, args.out, sources, check_images=not args.no_check_images)
    for name, (images, captions, path) in written.items():
        logger.info(f"{name}: {images} images, {captions} captions -> {path}  (from {sources[name]})")
