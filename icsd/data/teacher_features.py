"""External teacher features on disk (docs/data.md).

Image teacher ("unicom"), two layouts:

1. the released layout: a pickled dict ``{image_id: array (1, D) or (D,)}`` saved with ``np.save``;
2. the project's layout: a float16 matrix ``[N, D]`` in a ``.npy`` file opened with ``mmap_mode="r"``
   (never read whole; rows are read on demand), plus a sidecar ``<file>.meta.json`` whose ``ids`` list
   the image_id of every row. The format itself is ``icsd.data.feature_file``'s.

Text teacher: a float16 matrix ``[num_records, D]`` with a sidecar holding the teacher's name and the
fingerprint of the preprocessed captions it encoded; a cache built from other captions or by another
teacher is refused, never silently used.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np

from icsd.data.feature_file import (
    CHECKED_FINITE,
    FLOAT16_MAX,
    MatrixRows,
    first_bad_row,
    meta_path,
    npy_is_pickled,
    read_meta,
)
from icsd.errors import DataError
from icsd.logger import env_rank

logger = logging.getLogger(__name__)


def _bad_value(vector: np.ndarray) -> Optional[str]:
    """What is wrong with a feature vector, if anything: the loader sends teacher features as float16."""
    values = np.asarray(vector, dtype=np.float64)
    if not np.isfinite(values).all():
        return "is not finite (NaN or infinity)"
    if np.abs(values).max(initial=0) > FLOAT16_MAX:
        return f"has a value beyond float16's range (|x| = {np.abs(values).max():.4g} > {FLOAT16_MAX:g})"
    return None


def _check_matrix(matrix: MatrixRows, meta: dict, describe_row) -> None:
    """Scan a feature matrix for NaN, infinite or out-of-range values (skipped when its sidecar says the
    project's writer already checked every row), naming the first bad row with ``describe_row(row)``."""
    if meta.get(CHECKED_FINITE) is True:
        return
    row = first_bad_row(matrix)
    if row is not None:
        problem = _bad_value(np.asarray(matrix[row]))
        raise DataError(f"{matrix.path}: the feature of {describe_row(row)} {problem}")


class ImageFeatures:
    """An image teacher's features: ``ids[row]`` and ``vector(row)`` (flattened, as stored), any layout."""

    def __init__(self, path: str, ids: Sequence[str], dim: int, rows):
        self.path = path
        self.ids = list(ids)
        self.dim = dim
        self._rows = rows  # MatrixRows (the mmap layout) or a list of arrays of D elements each

    def __len__(self) -> int:
        return len(self.ids)

    def vector(self, row: int) -> np.ndarray:
        return np.asarray(self._rows[row]).reshape(-1)

    def rows_for(self, image_ids: Sequence[str]) -> np.ndarray:
        """Row of each image_id; a DataError names the file and the first image_id with no feature."""
        position = {image_id: row for row, image_id in enumerate(self.ids)}
        rows = np.empty(len(image_ids), dtype=np.int64)
        for i, image_id in enumerate(image_ids):
            if image_id not in position:
                raise DataError(f"{self.path}: no image feature for image_id {image_id!r}")
            rows[i] = position[image_id]
        return rows


def read_pickled_dict(path: str) -> dict:
    """The released dict ``{image_id: array}``, or a DataError naming the file."""
    if not os.path.isfile(path):
        raise DataError(f"feature file not found: {path}")
    try:
        data = np.load(path, allow_pickle=True)
        data = data.item() if isinstance(data, np.ndarray) and data.shape == () else data
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise DataError(f"{path}: cannot read a pickled feature dict ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty pickled dict {{image_id: array}}, "
                        f"got {type(data).__name__}")
    return data


def _load_pickled_dict(path: str) -> ImageFeatures:
    if env_rank() == 0:  # said once, not by every process of a job
        size = os.path.getsize(path)
        logger.warning(f"warning: {path} ({size / 1e9:.1f} GB) is a pickled dict: every process unpickles it "
                       f"whole into memory. Convert it once to the memory-mapped layout: python -m icsd.prep "
                       f"convert-pickled {path} {os.path.splitext(path)[0]}_mmap.npy (then point "
                       f"data.image_features at the new file)")
    data = read_pickled_dict(path)
    ids, rows, dim = [], [], None
    for key, value in data.items():
        value = np.asarray(value)
        if value.ndim == 2 and value.shape[0] == 1:
            value = value[0]
        elif value.ndim != 1:
            value = value.reshape(-1)
        if dim is None:
            dim = value.size
        elif value.size != dim:
            raise DataError(f"{path}: feature of image_id {str(key)!r} has dimension {value.size}, "
                            f"the others have {dim}")
        problem = _bad_value(value)
        if problem:
            raise DataError(f"{path}: the feature of image_id {str(key)!r} {problem}")
        ids.append(str(key))
        rows.append(value)
    return ImageFeatures(path, ids, dim, rows)


def _load_matrix(path: str, meta: dict) -> ImageFeatures:
    matrix = MatrixRows(path)
    if matrix.ndim != 2:
        raise DataError(f"{path}: expected a 2-D feature matrix [N, D], got shape {matrix.shape}")
    ids = meta.get("ids")
    if not isinstance(ids, list) or len(ids) != matrix.shape[0]:
        raise DataError(f"{meta_path(path)}: 'ids' must list one image_id per row "
                        f"({matrix.shape[0]} rows, got {len(ids) if isinstance(ids, list) else ids!r})")
    if "dim" in meta and meta["dim"] != matrix.shape[1]:
        raise DataError(f"{path}: sidecar says dim {meta['dim']}, the matrix has {matrix.shape[1]} columns")
    _check_matrix(matrix, meta, lambda row: f"image_id {str(ids[row])!r} (row {row})")
    return ImageFeatures(path, [str(i) for i in ids], int(matrix.shape[1]), matrix)


def load_image_features(path: str) -> ImageFeatures:
    """Open an image-teacher file in either layout (the sidecar decides; else the released dict)."""
    if not os.path.isfile(path):
        raise DataError(f"image feature file not found: {path}")
    if npy_is_pickled(path):
        return _load_pickled_dict(path)
    meta = read_meta(path)
    if meta is None:
        raise DataError(f"{path}: a feature matrix needs its sidecar {meta_path(path)} listing the row ids")
    return _load_matrix(path, meta)


def load_text_features(path: str, fingerprint: str, num_records: int, teacher: Optional[str]) -> MatrixRows:
    """Open a text-feature cache (rows read on demand) after checking it matches the captions.

    ``teacher`` None accepts a cache from any teacher (only the captions are checked).
    """
    meta = read_meta(path)
    if not os.path.isfile(path) or meta is None:
        raise DataError(f"text feature cache not found: {path} (with sidecar {meta_path(path)})")
    stale = []
    if meta.get("fingerprint") != fingerprint:
        stale.append(f"it was built from other captions (fingerprint {str(meta.get('fingerprint'))[:12]}... "
                     f"!= {fingerprint[:12]}...)")
    if teacher is not None and meta.get("model") != teacher:
        stale.append(f"it was built by teacher {meta.get('model')!r}, the config asks for {teacher!r}")
    if stale:
        raise DataError(f"stale text feature cache {path}: {'; '.join(stale)}. Delete it to rebuild it, "
                        f"or set data.text_features to another file")
    matrix = MatrixRows(path)
    if matrix.ndim != 2 or matrix.shape[0] != num_records:
        raise DataError(f"{path}: expected [{num_records}, D] text features, got shape {matrix.shape}")
    _check_matrix(matrix, meta, lambda row: f"caption record {row}")
    return matrix
