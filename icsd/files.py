"""The project's files: one durable writer, one JSON/YAML reader, and the checks of user-given paths.

Writing: every file (checkpoints, logs, sidecars, exports, split files) is written whole or not at all:
into ``<path>.tmp`` beside the target, flushed and ``fsync``-ed, renamed over the target (atomic on one
file system), then the folder is ``fsync``-ed so the rename itself survives a power or node failure. A
failed write removes its temp file, leaves the previous file intact, and a lack of space (a full disk,
``ENOSPC``, or a reached quota, ``EDQUOT``) is said as such, naming the path.

Reading: JSON and YAML as editors save them (UTF-8 with or without a byte-order mark; CRLF line ends),
with one message naming the file when it is missing, a folder, or malformed.
"""
from __future__ import annotations

import errno
import json
import os
from typing import IO, Any, Callable

import yaml

from icsd.errors import FileWriteError, ICSDError

TMP_SUFFIX = ".tmp"
ENCODING = "utf-8-sig"  # reads UTF-8 with or without a byte-order mark
# The C loader when PyYAML has it: reading 100 run configs then costs milliseconds, not a second.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NO_SPACE = {errno.ENOSPC: "no space left on the device: the disk is full",
             errno.EDQUOT: "no space left for you: the disk quota is reached"}


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------
def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or one in its cause/context chain. ``torch.save`` into a Python
    file reports a failed write as ``RuntimeError('... unexpected pos ...')`` raised while handling the
    file's own ``OSError``, which carries the errno."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (a no-op where the file system cannot sync a folder)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, write: Callable[[IO[bytes]], None], what: str = "file") -> None:
    """``write(f)`` fills a binary file object; the result replaces ``path`` durably. On failure the temp
    file is removed, ``path`` is left as it was, and an ``OSError`` (raised as such, or inside a library's
    writer as with ``torch.save``) becomes a ``FileWriteError`` naming ``what`` and ``path``."""
    tmp = path + TMP_SUFFIX
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove_quietly(tmp)
        cause = _os_error(exc)
        if cause is None:
            raise
        reason = _NO_SPACE.get(cause.errno, cause.strerror or str(cause))
        raise FileWriteError(f"writing the {what} {path} failed: {reason}", no_space=cause.errno in _NO_SPACE
                             ) from None
    fsync_dir(os.path.dirname(path))


def write_text(path: str, text: str, what: str = "file") -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), what)


def write_json(path: str, value: Any, what: str = "file", indent: int | None = None) -> None:
    write_text(path, json.dumps(value, indent=indent) + ("\n" if indent is not None else ""), what)


def write_yaml(path: str, mapping: dict, what: str = "file") -> None:
    write_text(path, yaml.safe_dump(mapping, sort_keys=False), what)


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------
def _open_for_reading(path: str, what: str, error: type[ICSDError]):
    if os.path.isdir(path):
        raise error(f"{what} {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise error(f"{what} not found: {path}")
    return open(path, encoding=ENCODING)


def read_json(path: str, what: str = "file", error: type[ICSDError] = ICSDError) -> Any:
    """A JSON file's value; ``error`` (an ICSDError class) names the file when it cannot be read."""
    with _open_for_reading(path, what, error) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise error(f"{path}: malformed JSON ({exc})") from None


def read_yaml(path: str, what: str = "file", error: type[ICSDError] = ICSDError) -> Any:
    """A YAML file's value (None for an empty file), as ``read_json``."""
    with _open_for_reading(path, what, error) as f:
        try:
            return yaml.load(f, Loader=_YAML_LOADER)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise error(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


def read_json_lines(path: str) -> list[dict]:
    """The JSON objects of a JSON-lines file, skipping a line cut short by a crash."""
    records = []
    with open(path, encoding=ENCODING) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


# ----------------------------------------------------------------------------------------------------
# Paths the user gives
# ----------------------------------------------------------------------------------------------------
def require_folder(path: str, key: str, error: type[ICSDError] = ICSDError) -> None:
    """``path`` (named by the config key or flag ``key``) must be an existing folder."""
    if os.path.isfile(path):
        raise error(f"{key}: {path} is a file, not a folder")
    if not os.path.isdir(path):
        raise error(f"{key}: folder not found: {path}")


def require_file(path: str, key: str, error: type[ICSDError] = ICSDError, what: str = "file") -> None:
    """``path`` (named by ``key``; a ``what``, e.g. "checkpoint") must be an existing file."""
    if os.path.isdir(path):
        raise error(f"{key}: {path} is a folder, not a {what}")
    if not os.path.isfile(path):
        raise error(f"{key}: {what} not found: {path}")


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def require_creatable_folder(path: str, key: str, error: type[ICSDError] = ICSDError) -> None:
    """``path`` (named by ``key``) is a folder, or can be created: nothing on the way is a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise error(f"{key}: {path} is a file, not a folder")
    ancestor = _existing_ancestor(path)
    if not os.path.isdir(ancestor):
        raise error(f"{key}: cannot create the folder {path}: {ancestor} is a file, not a folder")


def require_creatable_file(path: str, key: str, error: type[ICSDError] = ICSDError) -> None:
    """``path`` (named by ``key``) is a file to write: not a folder, and its folder exists or can be made."""
    if os.path.isdir(path):
        raise error(f"{key}: {path} is a folder, not a file")
    require_creatable_folder(os.path.dirname(os.path.abspath(path)), key, error)
