"""Images cross the data loader as uint8 and are normalised on the device, as timm's prefetcher does.

The backbone's transform (open_clip: resize, centre crop, RGB, ``ToTensor``, ``Normalize``) is split in two:
the geometry runs in the loader workers and ends in a uint8 tensor; ``ToTensor``'s ``/ 255`` and ``Normalize``
run on the batch on the device. Workers then skip two float passes over every image, and each batch moves
4x fewer bytes through shared memory, pinned memory and the host-to-device copy. The result is bit-for-bit
the full transform: the same float32 operations in the same order (a test asserts equality).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import torch
from torchvision import transforms as T

from icsd.errors import ConfigError


@dataclass(frozen=True)
class PixelTransform:
    host: Callable[..., torch.Tensor]  # PIL image -> uint8 [3, H, W]: the transform's geometry (loader workers)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 model input: exactly ``Normalize(ToTensor(image))``, on the batch's device."""
        mean, std = _channel_values(self.mean, images.device), _channel_values(self.std, images.device)
        return images.to(torch.float32).div(255).sub(mean).div(std)


@cache
def _channel_values(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``values`` as a float32 [C, 1, 1] tensor on ``device``, made once: built from Python numbers on every
    batch, it would be a blocking host-to-device copy per step."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


def split_transform(transform: T.Compose) -> PixelTransform:
    """Split a ``Compose(..., ToTensor, Normalize)`` into its uint8 host part and the device normalisation."""
    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
        raise ConfigError(f"the backbone's image transform must end in ToTensor, Normalize to be split into "
                          f"uint8 loading and normalisation on the device; got {transform!r}")
    norm = steps[-1]
    return PixelTransform(T.Compose([*steps[:-2], T.PILToTensor()]), tuple(norm.mean), tuple(norm.std))


class DeviceBatches:
    """Iterates ``loader``'s batches moved to ``device``, images normalised there (``len`` is the loader's)."""

    def __init__(self, loader: Iterable, device: torch.device, pixels: PixelTransform):
        self.loader, self.device, self.pixels = loader, device, pixels

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            # non_blocking: from pinned host memory the copy overlaps the previous step's GPU work.
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            batch["image"] = self.pixels.normalize(batch["image"])
            yield batch
