"""Checkpoints written by training: atomic saves, links, and the RNG states a resumed run needs to continue
exactly."""
from __future__ import annotations

import os
import random
import shutil
from typing import Callable, Optional

import numpy as np
import torch

TMP_SUFFIX = ".tmp"


def save_checkpoint(state: dict, path: str, before_rename: Optional[Callable[[], None]] = None) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: a crash never leaves half a file
    under ``path`` (a leftover ``.tmp`` is removed by the next start of the run)."""
    tmp = path + TMP_SUFFIX
    torch.save(state, tmp)
    if before_rename is not None:
        before_rename()
    os.replace(tmp, path)


def link_checkpoint(src: str, dst: str) -> None:
    """Make ``dst`` the same file as ``src``: a hard link (instant, no extra disk), or a copy where the file
    system has none; atomically (temp name, then rename), so ``dst`` is always a whole checkpoint. A later
    ``save_checkpoint(src)`` replaces ``src`` by a new file and leaves ``dst`` as it was."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return  # already linked (a resumed run redoing its bookkeeping); rename() would leave the temp name
    tmp = dst + TMP_SUFFIX
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def rng_state(device: torch.device) -> dict:
    """This process's RNG states: Python, NumPy, torch CPU and its own CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
