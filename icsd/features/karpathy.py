"""Records of the project's split JSONs from Karpathy's split files (``dataset_coco.json``,
``dataset_flickr30k.json``): ``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]}``.

Splits: train = ``train`` + ``restval`` (COCO's 113,287 training images), val, test. The caption is each
sentence's ``raw`` text (preprocessing happens when a split is loaded); the image path is
``<image_dir>/<filepath>/<filename>`` (Flickr30K has no ``filepath``); the image_id comes from the file
name (``COCO_val2014_000000391895.jpg``, or its stem with ``id_style="stem"``).
"""
from __future__ import annotations


from icsd.data.jsonio import read_json
from icsd.errors import DataError
from icsd.features.split_writer import image_id_of, image_path_of

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_karpathy(path: str) -> list:
    data = read_json(path, "Karpathy split file")
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
