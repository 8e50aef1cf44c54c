"""Image-teacher features of a split's images (once each, sorted by image_id as ``load_split`` lists them),
batched and resumably, into the project's layout (float16 ``[N, D]`` + sidecar whose ``ids`` name the rows).
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from icsd.amp import PRECISIONS, autocast
from icsd.data.annotations import Split
from icsd.data.datasets import EvalImages, load_image
from icsd.errors import ConfigError, DataError
from icsd.features.image_encoders import ImageEncoder
from icsd.features.loop import run_extraction
from icsd.features.writer import FeatureWriter, is_complete

def _device_of(encoder: ImageEncoder) -> torch.device:
    param = next(encoder.model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def token_shape(encoder: ImageEncoder, image_path: str) -> Optional[list]:
    """``[N, C]`` of the encoder's token output, from one image; None for pooled or pre-flattened outputs."""
    if encoder.meta.get("mode") != "tokens":
        return None
    device = _device_of(encoder)
    with torch.no_grad():
        out = encoder.forward(encoder.transform(load_image(image_path)).unsqueeze(0).to(device))
    return [int(n) for n in out.shape[1:]] if out.ndim == 3 else None


def image_meta(encoder: ImageEncoder, split: Split) -> dict:
    """The sidecar fields (``dim``, ``rows``, ``dtype`` are added by the writer)."""
    meta = {**encoder.meta, "kind": "image", "ids": list(split.image_ids)}
    shape = token_shape(encoder, split.image_paths[0])
    if shape is not None:
        meta["tokens"] = shape
    return meta


def extract_image_features(path: str, split: Split, encoder: ImageEncoder, batch_size: int = 128,
                           num_workers: int = 4, precision: str = "fp32", show_progress: bool = True,
                           flush_every: int = 20, max_batches: Optional[int] = None,
                           overwrite: bool = False) -> bool:
    """Encode every image of ``split`` into ``path``; True when the file is complete.

    An interrupted run continues from its last checkpoint; a complete file of the same job (same model,
    mode, weights and image ids) is kept unless ``overwrite``."""
    if split.num_images == 0:
        raise DataError(f"{split.annotation_file}: no images to encode")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    meta = image_meta(encoder, split)
    if not overwrite and is_complete(path, meta, split.num_images):
        return True
    writer = FeatureWriter(path, split.num_images, meta, flush_every=flush_every, resume=not overwrite)
    device = _device_of(encoder)
    images = EvalImages(split, encoder.transform)

    def batches(start: int) -> Iterator[np.ndarray]:
        loader = DataLoader(Subset(images, range(start, len(images))), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
        for batch in loader:
            with autocast(precision, device):
                features = encoder.encode(batch.to(device, non_blocking=True))
            yield features.cpu().numpy()  # outside the autocast context: a generator suspends here

    label = f"image features ({encoder.meta.get('model')}, {encoder.meta.get('mode')})"
    return run_extraction(writer, batches, desc=label, show_progress=show_progress, max_batches=max_batches)
