"""Records of the project's split JSONs from Karpathy's split files (``dataset_coco.json``,
``dataset_flickr30k.json``): ``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]}``.

Splits: train = ``train`` + ``restval`` (COCO's 113,287 training images), val, test. The caption is each
sentence's ``raw`` text (preprocessing happens when a split is loaded); the image path is
``<image_dir>/<filepath>/<filename>`` (Flickr30K has no ``filepath``); the image_id comes from the file
name (``COCO_val2014_000000391895.jpg``, or its stem with ``id_style="stem"``).
"""
from __future__ import annotations

import argparse
import logging

from icsd.errors import DataError
from icsd.files import read_json
from icsd.tools.prep.common import add_split_output_arguments
from icsd.tools.prep.split_writer import image_id_of, image_path_of, write_splits

logger = logging.getLogger(__name__)

USAGE = """Split JSONs (one {image_path, caption, image_id} record per caption) from Karpathy's split file,
after checking that every image exists. COCO: train = train + restval (113,287 images), val 5,000,
test 5,000. Run from the repository root:

    python -m icsd.prep karpathy --karpathy datasets/coco/dataset_coco.json --root datasets/coco --images images
    python datasets/prepare_karpathy.py --karpathy datasets/flickr30k/dataset_flickr30k.json \\
        --root datasets/flickr30k --images flickr30k-images
"""

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_karpathy(path: str) -> list:
    data = read_json(path, "Karpathy split file", DataError)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise DataError(f"{path}: expected Karpathy's format, an object with a non-empty 'images' list")
    return images


def _caption(path: str, where: str, sentence) -> str:
    if isinstance(sentence, dict) and isinstance(sentence.get("raw"), str):
        return sentence["raw"].strip()
    if isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
        return " ".join(map(str, sentence["tokens"]))
    raise DataError(f"{path}: {where} has a sentence without 'raw' text: {sentence!r}")


def karpathy_records(path: str, image_dir: str = "", id_style: str = "filename") -> dict[str, list[dict]]:
    """``{"train": [...], "val": [...], "test": [...]}`` of ``{image_path, caption, image_id}`` records."""
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for i, image in enumerate(read_karpathy(path)):
        where = f"images[{i}]"
        if not isinstance(image, dict):
            raise DataError(f"{path}: {where} is not an object")
        missing = [k for k in ("filename", "split", "sentences") if k not in image]
        if missing:
            raise DataError(f"{path}: {where} has no field {', '.join(repr(m) for m in missing)}")
        where = f"{where} ({image['filename']})"
        if image["split"] not in KARPATHY_SPLITS:
            raise DataError(f"{path}: {where} has unknown split {image['split']!r} "
                            f"(expected one of {', '.join(KARPATHY_SPLITS)})")
        if not isinstance(image["sentences"], list) or not image["sentences"]:
            raise DataError(f"{path}: {where} has no sentences")
        image_path = image_path_of(image_dir, image.get("filepath") or "", image["filename"])
        image_id = image_id_of(image["filename"], id_style)
        records = splits[KARPATHY_SPLITS[image["split"]]]
        for sentence in image["sentences"]:
            records.append({"image_path": image_path, "caption": _caption(path, where, sentence),
                            "image_id": image_id})
    return splits


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--karpathy", required=True, help="dataset_coco.json or dataset_flickr30k.json")
    add_split_output_arguments(parser, "image folder under the root, holding <filepath>/<filename> (COCO: "
                                       "train2014/, val2014/) or <filename> (Flickr30K)",
                               "image_id = the image file name (default) or its stem")


def run(args: argparse.Namespace) -> None:
    splits = karpathy_records(args.karpathy, args.images, args.id_style)
    written = write_splits(splits, args.root, args.out, {name: args.karpathy for name in splits},
                           check_images=not args.no_check_images)
    for name, (images, captions, path) in written.items():
        logger.info(f"{name}: {images} images, {captions} captions -> {path}")
