"""Split annotation files: one JSON list per split of ``{image_path, caption, image_id}`` records.

``load_split`` reads and validates a split and builds its index: images once each, sorted by image_id
(as the reference), captions grouped by image, ``img2txt`` and ``txt2img``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from icsd.data.captions import preprocess_caption
from icsd.errors import DataError
from icsd.files import read_json

REQUIRED_FIELDS = ("image_path", "caption", "image_id")


@dataclass(frozen=True)
class Split:
    """A split with its captions in record order and its images sorted by image_id (the encoding order: PDM
    depends on the batch, and the reference encodes sorted).

    ``captions[t]`` is the preprocessed caption of record ``t``; ``txt2img[t]`` is the index of its image
    in ``image_ids``/``image_paths``; ``img2txt[i]`` lists the records of image ``i`` in record order.
    """

    name: str
    annotation_file: str
    captions: list[str]
    image_ids: list[str]
    image_paths: list[str]
    txt2img: np.ndarray  # [num_captions] int64
    img2txt: list[np.ndarray]
    file_order: np.ndarray  # image indices in the order they first appear in the annotation file (Karpathy's)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def grouped_text_order(self) -> np.ndarray:
        """Record indices with the captions grouped by image, images in ``image_ids`` order."""
        return np.concatenate(self.img2txt) if self.img2txt else np.zeros(0, dtype=np.int64)


def read_records(path: str) -> list[dict]:
    records = read_json(path, "annotation file", DataError)
    if not isinstance(records, list) or not records:
        raise DataError(f"{path}: expected a non-empty JSON list of records")
    return records


def load_split(name: str, path: str, root: str, max_words: int = 64, check_images: bool = True) -> Split:
    """Read ``path``, validate every record, preprocess captions and index images by sorted image_id."""
    records = read_records(path)
    captions: list[str] = []
    record_ids: list[str] = []
    path_of: dict[str, str] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: record {i} is not an object")
        missing = [k for k in REQUIRED_FIELDS if k not in rec]
        if missing:
            raise DataError(f"{path}: record {i} has no field {', '.join(repr(m) for m in missing)}")
        if not isinstance(rec["caption"], str):
            raise DataError(f"{path}: record {i} (image_id {rec['image_id']!r}): the caption must be a string, "
                            f"got {type(rec['caption']).__name__} {rec['caption']!r}")
        caption = preprocess_caption(rec["caption"], max_words)
        if not caption:
            raise DataError(f"{path}: record {i} (image_id {rec['image_id']!r}) has an empty caption "
                            f"after preprocessing: {rec['caption']!r}")
        image_id = str(rec["image_id"])
        image_path = os.path.normpath(os.path.join(root, rec["image_path"]))
        if path_of.setdefault(image_id, image_path) != image_path:
            raise DataError(f"{path}: record {i}: image_id {image_id!r} is listed with two image paths "
                            f"({path_of[image_id]} and {image_path})")
        captions.append(caption)
        record_ids.append(image_id)

    image_ids = sorted(path_of)
    image_paths = [path_of[i] for i in image_ids]
    if check_images:
        for image_id, image_path in zip(image_ids, image_paths):
            if not os.path.isfile(image_path):
                raise DataError(f"{path}: image of image_id {image_id!r} not found: {image_path}")
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    txt2img = np.fromiter((position[i] for i in record_ids), dtype=np.int64, count=len(record_ids))
    order = np.argsort(txt2img, kind="stable")
    bounds = np.searchsorted(txt2img[order], np.arange(len(image_ids) + 1))
    img2txt = [order[bounds[i]:bounds[i + 1]] for i in range(len(image_ids))]
    file_order = np.fromiter((position[i] for i in dict.fromkeys(record_ids)), dtype=np.int64, count=len(image_ids))
    return Split(name, path, captions, image_ids, image_paths, txt2img, img2txt, file_order)
