"""Torch datasets: training pairs (one item per caption) and evaluation images / texts.

An image comes from an image source (``images(i)``: the uint8 tensor of the split's image ``i``), decoded from
its file (``DecodedImages``) or read from the pixel cache (``icsd.data.caches.Rows``); a caption's tokens from a
token source (``tokens(t)``), tokenized (``Tokenized``) or read from the token cache: the same tensors either way.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from icsd.data.annotations import Split
from icsd.data.feature_file import MatrixRows
from icsd.data.teacher_features import ImageFeatures
from icsd.errors import ImageReadError


def load_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None


def teacher_tensor(vector: np.ndarray) -> torch.Tensor:
    """Teacher features travel as float16 (their storage type: half the bytes to pin, copy and gather);
    the loss computes their similarities in float32."""
    return torch.tensor(vector, dtype=torch.float16)


class DecodedImages:
    """``images(i)``: image file ``i`` decoded and put through ``transform``."""

    def __init__(self, paths, transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __call__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index]))


class Tokenized:
    """``tokens(t)``: caption ``t`` through ``tokenizer``."""

    def __init__(self, captions, tokenizer: Callable):
        self.captions, self.tokenizer = captions, tokenizer

    def __call__(self, index: int) -> torch.Tensor:
        return self.tokenizer(self.captions[index])[0]


class TrainPairs(Dataset):
    """Item ``t`` = caption record ``t``: its image, tokens, image index (for multi-positive targets)
    and, when given, the external image feature of its image and the external text feature of the caption.
    ``transform`` and ``tokenizer`` are the image and token sources' fallbacks: ``images`` / ``tokens`` (the
    caches) are read when given."""

    def __init__(self, split: Split, transform: Callable, tokenizer: Callable,
                 image_features: Optional[ImageFeatures] = None, text_features: Optional[MatrixRows] = None,
                 images: Optional[Callable] = None, tokens: Optional[Callable] = None):
        self.split = split
        self.images = images or DecodedImages(split.image_paths, transform)
        self.tokens = tokens or Tokenized(split.captions, tokenizer)
        self.image_features = image_features
        self.image_rows = image_features.rows_for(split.image_ids) if image_features is not None else None
        self.text_features = text_features

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_index = int(self.split.txt2img[index])
        item = {"image": self.images(image_index), "tokens": self.tokens(index),
                "image_index": torch.tensor(image_index)}
        if self.image_features is not None:
            item["ext_img"] = teacher_tensor(self.image_features.vector(self.image_rows[image_index]))
        if self.text_features is not None:
            item["ext_txt"] = teacher_tensor(self.text_features[index])
        return item


class EvalImages(Dataset):
    """The split's images once each, in ``split.image_ids`` order (sorted by image_id); from ``images`` (the
    pixel cache) when given, else decoded through ``transform``."""

    def __init__(self, split: Split, transform: Callable, images: Optional[Callable] = None):
        self.count = split.num_images
        self.images = images or DecodedImages(split.image_paths, transform)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images(index)


class EvalTexts(Dataset):
    """The split's captions grouped by image (images in sorted order), as tokens."""

    def __init__(self, split: Split, tokenizer: Callable, tokens: Optional[Callable] = None):
        self.order = split.grouped_text_order()
        self.tokens = tokens or Tokenized(split.captions, tokenizer)
        self.txt2img = torch.from_numpy(split.txt2img[self.order])

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tokens(int(self.order[index]))
