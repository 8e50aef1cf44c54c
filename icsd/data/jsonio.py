"""Reading a JSON file, with a DataError that names the file when it is missing or malformed."""
from __future__ import annotations

import json
import os

from icsd.errors import DataError


def read_json(path: str, what: str = "file"):
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from None
