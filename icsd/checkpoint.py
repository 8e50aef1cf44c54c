"""Checkpoints: atomic writes, and the RNG states a resumed run needs to continue exactly."""
from __future__ import annotations

import os
import random
import shutil

import numpy as np
import torch

from icsd.errors import CheckpointError


def save_checkpoint(state: dict, path: str) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: a crash never leaves half a file."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def copy_checkpoint(src: str, dst: str) -> None:
    """Copy a written checkpoint (cheaper than serialising it again), atomically."""
    tmp = f"{dst}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str) -> dict:
    """The checkpoint's dict, memory-mapped: tensors that are never used (e.g. the optimizer state when
    only evaluating) are never read."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an ICSD checkpoint (no 'model' entry)")
    return state


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
