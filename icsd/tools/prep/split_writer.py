"""Write the project's split JSONs (a list of ``{image_path, caption, image_id}``, one per caption)
after checking that every image exists, and count images and captions per split."""
from __future__ import annotations

import json
import os
import posixpath
from typing import Mapping, Sequence

from icsd.data.captions import preprocess_caption
from icsd.errors import DataError
from icsd.files import write_text

MAX_LISTED = 5


def image_path_of(image_dir: str, *parts: str) -> str:
    """A record's ``image_path``: relative to the data root, forward slashes, as the JSONs carry it."""
    return posixpath.normpath(posixpath.join(image_dir.replace(os.sep, "/") or ".", *parts))


def image_id_of(file_name: str, id_style: str) -> str:
    """An image_id from the image's file name: ``filename`` (``x.jpg``) or ``stem`` (``x``)."""
    base = posixpath.basename(file_name.replace("\\", "/"))
    if id_style == "filename":
        return base
    if id_style == "stem":
        return os.path.splitext(base)[0]
    raise DataError(f"unknown image_id style {id_style!r} (choose filename or stem)")


def check_images_exist(records: Sequence[dict], root: str, source: str) -> None:
    """A DataError listing the images (first few, with the count) that are not files under ``root``."""
    missing: list[str] = []
    seen: set[str] = set()
    for rec in records:
        path = os.path.join(root, rec["image_path"])
        if path not in seen:
            seen.add(path)
            if not os.path.isfile(path):
                missing.append(f"{path} (image_id {rec['image_id']!r})")
    if missing:
        listed = "\n  ".join(missing[:MAX_LISTED]) + ("\n  ..." if len(missing) > MAX_LISTED else "")
        raise DataError(f"{source}: {len(missing)} of {len(seen)} images not found under the data root {root}:\n"
                        f"  {listed}\n(check --root and --images, or pass --no-check-images)")


def check_unique_paths(records: Sequence[dict], source: str) -> None:
    """Each image_id must name one image file (the loader refuses two paths for one id)."""
    path_of: dict[str, str] = {}
    for rec in records:
        if path_of.setdefault(rec["image_id"], rec["image_path"]) != rec["image_path"]:
            raise DataError(f"{source}: image_id {rec['image_id']!r} is used by two images "
                            f"({path_of[rec['image_id']]} and {rec['image_path']}); try --id-style filename")


def check_captions(records: Sequence[dict], source: str) -> None:
    """Every caption must survive the loader's preprocessing (else training would stop on it later)."""
    for rec in records:
        if not preprocess_caption(str(rec["caption"])):
            raise DataError(f"{source}: a caption of image_id {rec['image_id']!r} is empty "
                            f"after preprocessing: {rec['caption']!r}")


def split_counts(records: Sequence[dict]) -> tuple[int, int]:
    """(images, captions) of a split."""
    return len({rec["image_id"] for rec in records}), len(records)


def write_json_atomic(path: str, records: Sequence[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, json.dumps(list(records), ensure_ascii=False), "split file")


def write_splits(splits: Mapping[str, Sequence[dict]], root: str, pattern: str,
                 sources: Mapping[str, str], check_images: bool = True) -> dict[str, tuple[int, int, str]]:
    """Check every split (not empty, one path per image_id, captions, images exist), then write
    ``root/pattern`` for each. ``sources[split]`` names the file it came from, for error messages.

    Returns ``{split: (images, captions, written path)}``; nothing is written when a check fails."""
    for name, records in splits.items():
        where = f"{sources[name]} ({name} split)"
        if not records:
            raise DataError(f"{where}: no records")
        check_unique_paths(records, where)
        check_captions(records, where)
        if check_images:
            check_images_exist(records, root, where)
    written = {}
    for name, records in splits.items():
        out = os.path.join(root, pattern.format(split=name))
        write_json_atomic(out, records)
        written[name] = (*split_counts(records), out)
    return written
