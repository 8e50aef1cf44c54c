"""Records of the project's split JSONs from ALBEF-style annotation files (``coco_train.json``,
``coco_test.json``, ``flickr30k_val.json``, ...):

- train files: ``[{"image": "val2014/x.jpg", "caption": "...", "image_id": "coco_522418"}, ...]``;
- val/test files: ``[{"image": "val2014/y.jpg", "caption": ["...", "...", ...]}, ...]``.

Either shape is accepted in any file: a list caption gives one record per caption, and a record without
``image_id`` gets one from its image file name (``y.jpg``, or ``y`` with ``id_style="stem"``). The image
path is ``<image_dir>/<image>``.
"""
from __future__ import annotations

from icsd.data.annotations import read_records
from icsd.errors import DataError
from icsd.features.split_writer import image_id_of, image_path_of


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
