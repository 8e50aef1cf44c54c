"""Mixed precision: the autocast context of a ``precision`` setting (``fp32 | amp_bf16 | amp_fp16``)."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
