"""Decoding every image of a split before training needs it (docs/data.md): a truncated or corrupt image
is found in seconds, not after an epoch of training."""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch.utils.data import Dataset

from icsd.config import Config
from icsd.data.build import load_data_split, load_teacher_features, training_split
from icsd.data.datasets import load_image
from icsd.data.loaders import Loader
from icsd.errors import DataError, ImageReadError

logger = logging.getLogger(__name__)


class _Decode(Dataset):
    """Item i: '' when image i decodes fully, else why it does not."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str:
        try:
            load_image(self.paths[index])
            return ""
        except ImageReadError as exc:
            return str(exc)


def unreadable_images(paths: Sequence[str], num_workers: int = 0, batch_size: int = 32) -> list[str]:
    """Decode every image of ``paths`` (in parallel with ``num_workers`` processes); the errors, in order."""
    if not paths:
        return []
    loader = Loader(_Decode(paths), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    # A DataLoader draws its workers' base seed from the global RNG: checking data must not change the
    # model's initialisation or the training that follows.
    with torch.random.fork_rng(devices=[]):
        return [error for batch in loader for error in batch if error]


def check_data(cfg: Config, with_teachers: bool) -> None:
    """``retrieval.py --check-data``: every split the config names (training and evaluated), their records
    and teacher features as training validates them, and every image decoded. Lists every unreadable
    image; a DataError says how many."""
    names = list(dict.fromkeys([cfg.data.train_split, *cfg.eval.splits]))
    total = 0
    for name in names:
        split = load_data_split(cfg.data, name)
        if with_teachers and name == cfg.data.train_split:
            load_teacher_features(cfg.data, split)
        if name == cfg.data.train_split:
            split = training_split(cfg.data, split)  # the prepared cache when data.image_root is set
        errors = unreadable_images(split.image_paths, cfg.data.num_workers)
        for error in errors:
            logger.info(f"  {name}: {error}")
        logger.info(f"{name}: {split.num_images} images, {split.num_captions} captions, "
                    f"{len(errors)} unreadable image(s)")
        total += len(errors)
    if total:
        raise DataError(f"{total} unreadable image(s) in the splits {', '.join(names)} (listed above)")
    logger.info("all data checked: ok")
