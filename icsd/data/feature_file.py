"""The project's feature-file format, read and written (docs/data.md); the one module that knows it.

A feature file is a float16 ``[N, D]`` ``.npy`` matrix plus a sidecar ``<file>.meta.json`` describing it
(``model``, ``mode``, ``kind``, ``ids`` of the rows for image features or ``fingerprint`` of the captions
for text features, ``dim``, ``rows``, ``dtype``). Data loading reads it (``MatrixRows``: rows on demand,
never the whole file); the preparation tools write it (``FeatureWriter``: resumable).

Writing: while rows are written the matrix lives in ``<path>.partial.npy`` (preallocated with
``np.lib.format.open_memmap``, so its header is exactly ``np.save``'s) and ``<path>.progress.json``
records how many rows are on disk. Rows are written with plain file writes (the process never maps
the growing file, so its memory stays flat however large the file) and made durable at each
``checkpoint()`` (flush + fsync, then the progress file). ``finish()`` renames the partial file to
``path`` and writes the sidecar, so ``path`` with its sidecar exists only once complete. A new writer
for the same job (same ``meta``, same row count) continues from the recorded row: rows are
deterministic functions of their inputs, so the result is byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Optional

import numpy as np

from icsd.errors import DataError
from icsd.files import ENCODING, read_json, write_text

logger = logging.getLogger(__name__)

META_SUFFIX = ".meta.json"


def meta_path(path: str) -> str:
    return path + META_SUFFIX


def read_meta(path: str) -> Optional[dict]:
    sidecar = meta_path(path)
    return read_json(sidecar, "sidecar", DataError) if os.path.isfile(sidecar) else None


def write_meta(path: str, meta: dict) -> None:
    write_text(meta_path(path), json.dumps(meta), "sidecar")


def npy_is_pickled(path: str) -> bool:
    """True for an object array (the released pickled dict), from the ``.npy`` header alone."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)(f)
        except ValueError as exc:
            raise DataError(f"{path}: not a .npy file ({exc})") from None
    return header[2].hasobject


class MatrixRows:
    """The rows of an ``[N, D]`` ``.npy`` matrix, read one at a time.

    The file is opened with ``np.load(mmap_mode="r")`` (header, shape and dtype; ``array()`` gives the
    read-only memmap for whole-matrix work). A row is read with ``os.pread`` of exactly its bytes, so the
    rows a DataLoader touches never stay mapped in the process: its RSS stays flat over a file of any size
    (the kernel keeps them in its page cache, which it reclaims as needed). Each process (every DataLoader
    worker) opens its own descriptor.
    """

    def __init__(self, path: str):
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        try:
            header = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a plain .npy feature matrix ({exc})") from None
        if header.ndim < 1 or not header.flags.c_contiguous:
            raise DataError(f"{path}: expected a C-ordered [N, D] matrix (save it with np.ascontiguousarray)")
        self.path, self.shape, self.dtype = path, header.shape, header.dtype
        self._offset = header.offset
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        del header

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row: int) -> np.ndarray:
        row = int(row)
        if not 0 <= row < self.shape[0]:
            raise IndexError(f"row {row} out of range for {self.path} with {self.shape[0]} rows")
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, self._row_bytes, self._offset + row * self._row_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.shape[1:])

    def array(self) -> np.memmap:
        """The whole matrix as a read-only memmap (inspection and tests; training reads rows)."""
        return np.load(self.path, mmap_mode="r")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}  # a descriptor does not cross processes

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


FLOAT16_MAX = 65504.0
CHECKED_FINITE = "checked_finite"  # sidecar flag of the writer: every row was finite and within float16's range


def first_bad_row(matrix: MatrixRows, chunk_rows: int = 1024) -> Optional[int]:
    """The first row holding a NaN, an infinity or a value beyond float16's range, or None; read in chunks
    (the whole file is scanned, never held: a feature file can be larger than memory)."""
    array = matrix.array()
    for start in range(0, len(array), chunk_rows):
        block = np.asarray(array[start:start + chunk_rows], dtype=np.float32)
        block = block.reshape(len(block), -1)
        bad = ~(np.isfinite(block) & (np.abs(block) <= FLOAT16_MAX)).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


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
    """What must match for a partial file to be continued, or a finished one to be reused. A list (the row ids,
    a pixel cache's sources: one entry per row) is kept as its fingerprint: the progress file, rewritten at
    every checkpoint of a build, stays small."""
    job = {k: v for k, v in meta.items() if not isinstance(v, (list, tuple))}
    for key, value in meta.items():
        if isinstance(value, (list, tuple)):
            job[f"{key}_fingerprint"] = ids_fingerprint(value if key == "ids" else map(json.dumps, value))
    job["rows"] = int(rows)
    return json.loads(json.dumps(job))  # as it reads back from JSON (tuples -> lists, ...)


def is_written(path: str) -> bool:
    """A finished matrix and its sidecar (``finish`` renames the matrix, then writes the sidecar: a matrix alone
    is a job killed between the two, to be done again)."""
    return os.path.isfile(path) and os.path.isfile(meta_path(path))


def is_complete(path: str, meta: dict, rows: int) -> bool:
    """True when ``path`` and its sidecar hold a finished matrix of this very job."""
    found = read_meta(path) if os.path.isfile(path) else None
    if found is None:
        return False
    recorded = {k: v for k, v in found.items() if k not in ("dim", "shape", "rows", "dtype", CHECKED_FINITE)}
    return job_identity(recorded, found.get("rows", -1)) == job_identity(meta, rows)


class FeatureWriter:
    """Write ``rows`` rows of one shape, in order, resumably (see the module docstring): float16 features by
    default (checked finite and within float16's range), or any ``dtype`` (the pixel and token caches: uint8
    images ``[3, S, S]``, int32 tokens ``[L]``, written as given).

    ``meta`` describes the job (``model``, ``mode``, ``kind``, ``fingerprint`` or ``ids``, ...); it goes
    to the sidecar, and a partial file from a job with other ``meta`` is discarded, not continued.
    ``flush_every`` batches, progress is made durable (and always on ``checkpoint()``/``close()``).
    """

    def __init__(self, path: str, rows: int, meta: dict, flush_every: int = 20, resume: bool = True,
                 log=logger.warning, dtype=DTYPE):
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
        self.dtype = np.dtype(dtype)
        self.row_shape: Optional[tuple] = None
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
            with open(self.progress_path, encoding=ENCODING) as f:
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
        shape, done = progress.get("row_shape", [progress.get("dim")]), progress.get("rows_done")
        try:
            header = np.load(self.partial_path, mmap_mode="r")
            ok = (isinstance(shape, list) and all(isinstance(n, int) for n in shape) and isinstance(done, int)
                  and 0 <= done <= self.rows and header.shape == (self.rows, *shape) and header.dtype == self.dtype)
            offset = header.offset
            del header
        except (OSError, ValueError):
            ok = False
        if not ok:
            self._log(f"{self.partial_path}: unreadable or inconsistent with {self.progress_path}; starting over")
            self._discard()
            return
        self.row_shape, self.rows_done, self._offset = tuple(shape), done, offset
        self._file = open(self.partial_path, "r+b")
        if done:
            self._log(f"{self.path}: resuming at row {done} of {self.rows}")

    def _discard(self) -> None:
        for stale in (self.partial_path, self.progress_path):
            if os.path.exists(stale):
                os.remove(stale)

    @property
    def dim(self) -> Optional[int]:
        """The row size of a feature matrix (its one row dimension)."""
        return None if self.row_shape is None else int(np.prod(self.row_shape))

    def _allocate(self, row_shape: tuple) -> None:
        matrix = np.lib.format.open_memmap(self.partial_path, mode="w+", dtype=self.dtype,
                                           shape=(self.rows, *row_shape))
        self._offset = int(matrix.offset)
        del matrix  # only the preallocated file and its header are wanted; rows go through plain writes
        self.row_shape = tuple(row_shape)
        self._file = open(self.partial_path, "r+b")
        self._write_progress()

    def _write_progress(self) -> None:
        write_text(self.progress_path, json.dumps({"rows_done": self.rows_done, "row_shape": list(self.row_shape),
                                                   "job": self.job}))

    # -- writing ---------------------------------------------------------------------------------
    def write(self, block) -> None:
        """Append ``block`` [b, *row shape] at row ``rows_done`` (features: any float dtype, made float16)."""
        block = np.asarray(block)
        if block.ndim < 2:
            raise DataError(f"{self.path}: expected a [batch, ...] block of rows, got shape {block.shape}")
        if self.rows_done + len(block) > self.rows:
            raise DataError(f"{self.path}: {self.rows_done + len(block)} rows written, {self.rows} expected")
        if self.row_shape is None:
            self._allocate(tuple(int(n) for n in block.shape[1:]))
        elif tuple(block.shape[1:]) != self.row_shape:
            what = (f"dimension {block.shape[1]}, the earlier rows have {self.dim}" if block.ndim == 2 else
                    f"shape {tuple(block.shape[1:])}, the earlier rows have {self.row_shape}")
            raise DataError(f"{self.path}: rows {self.rows_done}..{self.rows_done + len(block) - 1} have {what}")
        with np.errstate(over="ignore"):  # overflow is reported below, naming the row
            rows = np.ascontiguousarray(block, dtype=self.dtype)
        if self.dtype == DTYPE and not np.isfinite(rows).all():
            bad = self.rows_done + int(np.nonzero(~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1))[0][0])
            raise DataError(f"{self.path}: row {bad} has a non-finite feature (NaN, or beyond float16's "
                            f"range 65504)")
        self._file.seek(self._offset + self.rows_done * rows[0].nbytes)
        self._file.write(rows.tobytes())
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
        os.replace(self.partial_path, self.path)  # made durable by the sidecar's write, which syncs the folder
        shape = {"dim": self.dim} if len(self.row_shape) == 1 else {"shape": list(self.row_shape)}
        finite = {CHECKED_FINITE: True} if self.dtype == DTYPE else {}
        write_meta(self.path, {**self.meta, **shape, "rows": self.rows, "dtype": str(self.dtype), **finite})
        os.remove(self.progress_path)


def write_feature_matrix(path: str, matrix, meta: dict, chunk_rows: int = 4096) -> None:
    """Write a whole in-memory matrix (or any sliceable [N, D]) through ``FeatureWriter``."""
    writer = FeatureWriter(path, len(matrix), meta, resume=False)
    for start in range(0, len(matrix), chunk_rows):
        writer.write(np.asarray(matrix[start:start + chunk_rows]))
    writer.finish()
