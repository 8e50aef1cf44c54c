"""Image-teacher features of a split's images (once each, sorted by image_id as ``load_split`` lists them),
batched and resumably, into the project's layout (float16 ``[N, D]`` + sidecar whose ``ids`` name the rows).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Subset

from icsd.amp import PRECISIONS, autocast
from icsd.data.annotations import Split, load_split
from icsd.data.datasets import EvalImages, load_image
from icsd.data.extraction import run_extraction
from icsd.data.feature_file import FeatureWriter, is_complete
from icsd.data.loaders import Loader
from icsd.errors import ConfigError, DataError
from icsd.tools.prep.common import add_data_arguments, add_extraction_arguments, default_device, resolve_data_arguments
from icsd.tools.prep.image_encoders import BACKENDS, MODES, ImageEncoder, build_image_encoder

logger = logging.getLogger(__name__)

USAGE = """Image-teacher features of every image of each split, in the project's layout (float16 [N, D]
.npy + .meta.json sidecar listing the image_id of each row), batched and resumable: rerun the same
command after an interruption and it continues from its last checkpoint. Run from the repository root:

    # Unicom ViT-B/32 patch tokens (49 x 768 = 37,632 values per image), as the released features
    python -m icsd.prep extract-image --root datasets/coco --backend unicom --model ViT-B/32 --mode tokens
    # any open_clip model (tag or local weights), pooled embedding
    python datasets/extract_image_features.py --root datasets/coco --backend open_clip \\
        --model ViT-L-14 --pretrained datacomp_xl_s13b_b90k --mode pooled --out "{split}_clipl14.npy"
    # any timm model ('hub' = timm's own weights, or a local weights file)
    python datasets/extract_image_features.py --root datasets/coco --backend timm \\
        --model vit_base_patch16_224.augreg_in21k --pretrained hub --mode tokens
"""

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
        loader = Loader(Subset(images, range(start, len(images))), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
        for batch in loader:
            with autocast(precision, device):
                features = encoder.encode(batch.to(device, non_blocking=True))
            yield features.cpu().numpy()  # outside the autocast context: a generator suspends here

    label = f"image features ({encoder.meta.get('model')}, {encoder.meta.get('mode')})"
    return run_extraction(writer, batches, desc=label, show_progress=show_progress, max_batches=max_batches)


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, "--out", 'output file pattern under the root (default: the config\'s '
                                        'data.image_features, else "{split}_unicom.npy")')
    parser.add_argument("--backend", choices=BACKENDS, default="open_clip", help="model library (default open_clip)")
    parser.add_argument("--model", required=True,
                        help="open_clip name or model-config JSON, timm name, or unicom name (ViT-B/32)")
    parser.add_argument("--pretrained", default=None,
                        help="open_clip tag or weights file; timm: 'hub' or a weights file; unicom: weights "
                             "folder; none: random init (with --seed)")
    parser.add_argument("--mode", choices=MODES, default="pooled",
                        help="pooled embedding, or the final patch tokens flattened (N x C)")
    parser.add_argument("--force-quick-gelu", action="store_true", help="open_clip: QuickGELU (OpenAI weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random initialisation")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=4, help="image-loading processes")
    parser.add_argument("--precision", choices=("fp32", "amp_fp16", "amp_bf16"), default="fp32")
    add_extraction_arguments(parser)


def run(args: argparse.Namespace) -> None:
    resolve_data_arguments(args, "image_features")
    splits = [load_split(name, os.path.join(args.root, args.annotation.format(split=name)), args.root,
                         args.max_words) for name in args.splits]  # all checked before the model loads
    encoder = build_image_encoder(args.backend, args.model, args.pretrained, args.mode,
                                  default_device(args.device), args.seed, args.force_quick_gelu)
    for split in splits:
        out = os.path.join(args.root, args.out.format(split=split.name))
        done = extract_image_features(out, split, encoder, args.batch_size, args.num_workers, args.precision,
                                      not args.no_progress, args.flush_every, args.max_batches, args.overwrite)
        state = "done" if done else "stopped (rerun the same command to continue)"
        logger.info(f"{split.name}: {split.num_images} images -> {out} [{state}]")
