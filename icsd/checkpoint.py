"""Reading a checkpoint written by training (``torch.save`` of a dict with a ``model`` state)."""
from __future__ import annotations

import zipfile

import torch

from icsd.errors import CheckpointError
from icsd.files import require_file


def load_checkpoint(path: str, key: str = "--checkpoint") -> dict:
    """The checkpoint's dict, memory-mapped (tensors never used, such as the optimizer state when only
    evaluating, are never read); a legacy (non-zip) torch file is read without mmap. ``key``: how the user
    named the path (a flag), for the message when it is missing or a folder."""
    require_file(path, key, CheckpointError, "checkpoint")
    is_zip = zipfile.is_zipfile(path)  # torch.save's format since 1.6; mmap needs it
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=is_zip)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        if not is_zip:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor "
                                  f"a legacy torch file)") from None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path} is a damaged PyTorch checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an ICSD checkpoint (no 'model' entry)")
    return state
