"""Files written whole or not at all: written under a temporary name beside the target, then renamed over it
(``os.replace`` is atomic on one file system), so a kill never leaves a half-written file under the real name."""
from __future__ import annotations

import os
from typing import Callable


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` writes the content; the finished file is then renamed to ``path``."""
    tmp = f"{path}.tmp"
    write(tmp)
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomic(path, write)
