"""Torch datasets: training pairs (one item per caption) and evaluation images / texts."""
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


class TrainPairs(Dataset):
    """Item ``t`` = caption record ``t``: its image, tokens, image index (for multi-positive targets)
    and, when given, the external image feature of its image and the external text feature of the caption."""

    def __init__(self, split: Split, transform: Callable, tokenizer: Callable,
                 image_features: Optional[ImageFeatures] = None, text_features: Optional[MatrixRows] = None):
        self.split = split
        self.transform = transform
        self.tokenizer = tokenizer
        self.image_features = image_features
        self.image_rows = image_features.rows_for(split.image_ids) if image_features is not None else None
        self.text_features = text_features

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_index = int(self.split.txt2img[index])
        item = {
            "image": self.transform(load_image(self.split.image_paths[image_index])),
            "tokens": self.tokenizer(self.split.captions[index])[0],
            "image_index": torch.tensor(image_index),
        }
        if self.image_features is not None:
            item["ext_img"] = teacher_tensor(self.image_features.vector(self.image_rows[image_index]))
        if self.text_features is not None:
            item["ext_txt"] = teacher_tensor(self.text_features[index])
        return item


class EvalImages(Dataset):
    """The split's images once each, in ``split.image_ids`` order (sorted by image_id)."""

    def __init__(self, split: Split, transform: Callable):
        self.paths = split.image_paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index]))


class EvalTexts(Dataset):
    """The split's captions grouped by image (images in sorted order), as tokens."""

    def __init__(self, split: Split, tokenizer: Callable):
        self.order = split.grouped_text_order()
        self.captions = split.captions
        self.tokenizer = tokenizer
        self.txt2img = torch.from_numpy(split.txt2img[self.order])

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tokenizer(self.captions[self.order[index]])[0]
