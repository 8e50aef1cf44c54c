"""The resumable writer of the project's feature layout: a float16 ``[N, D]`` ``.npy`` + sidecar.

While rows are written the matrix lives in ``<path>.partial.npy`` (preallocated with
``np.lib.format.open_memmap``, so its header is exactly ``np.save``'s) and ``<path>.progress.json``
records how many rows are on disk. Rows are written with plain file writes (the process never maps
the growing file, so its memory stays flat however large the file) and made durable at each
``checkpoint()`` (flush + fsync, then the progress file). ``finish()`` renames the partial file to
``path`` and writes the sidecar (``features.write_meta``: ``model``, ``fingerprint``, ``ids``, ...,
``dim``, ``rows``, ``dtype``), so ``path`` with its sidecar exists only once complete.

A new writer for the same job (same ``meta``, same row count) continues from the recorded row: rows
are deterministic functions of their inputs, so the result is byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Optional

import numpy as np

from icsd.data.features import meta_path, read_meta, write_meta
from icsd.errors import DataError

PARTIAL_SUFFIX = ".partial.npy"
PROGRESS_SUFFIX = ".progress.json"
DTYPE = np.float16


def ids_fingerprint(ids) -> str:
    """SHA-256 over the row ids in order (the job identity keeps this, not the whole list)."""
    digest = hashlib.sha256()
    for i in ids:
        digest.update(str(i).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def job_identity(meta: dict, rows: int) -> dict:
    """What must match for a partial file to be continued, or a finished one to be reused."""
    job = {k: v for k, v in meta.items() if k != "ids"}
    if "ids" in meta:
        job["ids_fingerprint"] = ids_fingerprint(meta["ids"])
    job["rows"] = int(rows)
    return json.loads(json.dumps(job))  # as it reads back from JSON (tuples -> lists, ...)


def is_complete(path: str, meta: dict, rows: int) -> bool:
    """True when ``path`` and its sidecar hold a finished matrix of this very job."""
    found = read_meta(path) if os.path.isfile(path) else None
    if found is None:
        return False
    recorded = {k: v for k, v in found.items() if k not in ("dim", "rows", "dtype")}
    return job_identity(recorded, found.get("rows", -1)) == job_identity(meta, rows)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class FeatureWriter:
    """Write ``rows`` float16 rows of one width, in order, resumably (see the module docstring).

    ``meta`` describes the job (``model``, ``mode``, ``kind``, ``fingerprint`` or ``ids``, ...); it goes
    to the sidecar, and a partial file from a job with other ``meta`` is discarded, not continued.
    ``flush_every`` batches, progress is made durable (and always on ``checkpoint()``/``close()``).
    """

    def __init__(self, path: str, rows: int, meta: dict, flush_every: int = 20, resume: bool = True, log=_log):
        if rows <= 0:
            raise DataError(f"{path}: nothing to write (0 rows)")
        self.path = path
        self.rows = int(rows)
        self.meta = dict(meta)
        self.flush_every = max(1, int(flush_every))
        self.partial_path = path + PARTIAL_SUFFIX
        self.progress_path = path + PROGRESS_SUFFIX
        self.job = job_identity(self.meta, self.rows)
        self.rows_done = 0
        self.dim: Optional[int] = None
        self._file = None
        self._offset = 0
        self._pending = 0
        self._log = log
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume:
            self._resume()
        else:
            self._discard()

    # -- state on disk ---------------------------------------------------------------------------
    def _read_progress(self) -> Optional[dict]:
        try:
            with open(self.progress_path) as f:
                progress = json.load(f)
            return progress if isinstance(progress, dict) else None
        except (OSError, json.JSONDecodeError):
            return None

    def _resume(self) -> None:
        progress = self._read_progress() if os.path.isfile(self.progress_path) else None
        if progress is None:
            self._discard()
            return
        if progress.get("job") != self.job:
            self._log(f"{self.partial_path}: left by another job (other model, mode, inputs or size); "
                      f"starting over")
            self._discard()
            return
        dim, done = progress.get("dim"), progress.get("rows_done")
        try:
            header = np.load(self.partial_path, mmap_mode="r")
            ok = (isinstance(dim, int) and isinstance(done, int) and 0 <= done <= self.rows
                  and header.shape == (self.rows, dim) and header.dtype == DTYPE)
            offset = header.offset
            del header
        except (OSError, ValueError):
            ok = False
        if not ok:
            self._log(f"{self.partial_path}: unreadable or inconsistent with {self.progress_path}; starting over")
            self._discard()
            return
        self.dim, self.rows_done, self._offset = dim, done, offset
        self._file = open(self.partial_path, "r+b")
        if done:
            self._log(f"{self.path}: resuming at row {done} of {self.rows}")

    def _discard(self) -> None:
        for stale in (self.partial_path, self.progress_path):
            if os.path.exists(stale):
                os.remove(stale)

    def _allocate(self, dim: int) -> None:
        matrix = np.lib.format.open_memmap(self.partial_path, mode="w+", dtype=DTYPE, shape=(self.rows, dim))
        self._offset = int(matrix.offset)
        del matrix  # only the preallocated file and its header are wanted; rows go through plain writes
        self.dim = dim
        self._file = open(self.partial_path, "r+b")
        self._write_progress()

    def _write_progress(self) -> None:
        tmp = self.progress_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"rows_done": self.rows_done, "dim": self.dim, "job": self.job}, f)
        os.replace(tmp, self.progress_path)

    # -- writing ---------------------------------------------------------------------------------
    def write(self, block) -> None:
        """Append ``block`` [b, D] (any float dtype) at row ``rows_done``."""
        block = np.asarray(block)
        if block.ndim != 2:
            raise DataError(f"{self.path}: expected a [batch, D] block of features, got shape {block.shape}")
        if self.rows_done + len(block) > self.rows:
            raise DataError(f"{self.path}: {self.rows_done + len(block)} rows written, {self.rows} expected")
        if self.dim is None:
            self._allocate(int(block.shape[1]))
        elif block.shape[1] != self.dim:
            raise DataError(f"{self.path}: rows {self.rows_done}..{self.rows_done + len(block) - 1} have "
                            f"dimension {block.shape[1]}, the earlier rows have {self.dim}")
        with np.errstate(over="ignore"):  # overflow is reported below, naming the row
            half = np.ascontiguousarray(block, dtype=DTYPE)
        if not np.isfinite(half).all():
            bad = self.rows_done + int(np.nonzero(~np.isfinite(half).all(axis=1))[0][0])
            raise DataError(f"{self.path}: row {bad} has a non-finite feature (NaN, or beyond float16's "
                            f"range 65504)")
        self._file.seek(self._offset + self.rows_done * self.dim * half.itemsize)
        self._file.write(half.tobytes())
        self.rows_done += len(block)
        self._pending += 1
        if self._pending >= self.flush_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Make the rows written so far durable and record them in the progress file."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._write_progress()
        self._pending = 0

    def close(self) -> None:
        """Checkpoint and release the file (an unfinished job can be continued later)."""
        if self._file is not None:
            self.checkpoint()
            self._file.close()
            self._file = None

    def finish(self) -> None:
        """All rows written: move the matrix to ``path`` and write its sidecar."""
        if self.rows_done != self.rows:
            raise DataError(f"{self.path}: only {self.rows_done} of {self.rows} rows were written")
        self.close()
        if os.path.exists(meta_path(self.path)):
            os.remove(meta_path(self.path))  # never a new matrix beside an old sidecar
        os.replace(self.partial_path, self.path)
        write_meta(self.path, {**self.meta, "dim": int(self.dim), "rows": self.rows, "dtype": "float16"})
        os.remove(self.progress_path)


def write_feature_matrix(path: str, matrix, meta: dict, chunk_rows: int = 4096) -> None:
    """Write a whole in-memory matrix (or any sliceable [N, D]) through ``FeatureWriter``."""
    writer = FeatureWriter(path, len(matrix), meta, resume=False)
    for start in range(0, len(matrix), chunk_rows):
        writer.write(np.asarray(matrix[start:start + chunk_rows]))
    writer.finish()
