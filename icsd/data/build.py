"""Everything a run reads from ``data.root``: splits, teacher features and the datasets over them.

Loading validates the input up front (annotations, images, teacher features), so bad data stops a run
before the model is built, not hours into training.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional


from icsd.config import Config, DataConfig
from icsd.data.annotations import Split, load_split
from icsd.data.captions import caption_fingerprint
from icsd.data.datasets import TrainPairs
from icsd.data.features import ImageFeatures, MatrixRows, load_image_features, load_text_features, meta_path
from icsd.data.image_cache import cache_root, with_prepared_images
from icsd.distributed import DistEnv, barrier, broadcast_object
from icsd.errors import DataError


def data_path(data: DataConfig, pattern: str, split: str) -> str:
    return os.path.join(data.root, pattern.format(split=split))


def load_data_split(data: DataConfig, split: str) -> Split:
    if not os.path.isdir(data.root):
        raise DataError(f"data.root not found: {data.root} (see datasets/README.md to prepare a dataset)")
    return load_split(split, data_path(data, data.annotation, split), data.root, data.max_words)


def training_split(data: DataConfig, split: Split) -> Split:
    """The split the training loader reads: from the prepared image cache when ``data.image_root`` is set
    (checked now), else ``split`` itself. Evaluation keeps decoding the originals, so reported metrics
    stay comparable with runs without a cache."""
    root = cache_root(data)
    return split if root is None else with_prepared_images(split, root, data.root)


def needs_teacher_features(cfg: Config) -> bool:
    """External features are read only when the soft label uses them (weight > 0 and alpha < 1)."""
    s = cfg.loss.soft_label
    return s.weight > 0 and s.alpha < 1


@dataclass
class TeacherFeatures:
    image: ImageFeatures
    text: MatrixRows


def load_teacher_features(data: DataConfig, split: Split, env: DistEnv) -> TeacherFeatures:
    """Open both teachers' features for ``split``; build a missing text cache (main rank builds, the
    others wait) when ``data.text_teacher`` is set; refuse a stale one."""
    image = load_image_features(data_path(data, data.image_features, split.name))
    image.rows_for(split.image_ids)  # every image_id has a feature, or a DataError names it
    text_path = data_path(data, data.text_features, split.name)
    fingerprint = caption_fingerprint(split.captions)
    missing = not (os.path.isfile(text_path) and os.path.isfile(meta_path(text_path)))
    if broadcast_object(missing):  # the main rank's view decides, so every rank takes the same branch
        if data.text_teacher is None:
            raise DataError(f"text feature cache not found: {text_path}, and data.text_teacher is null "
                            f"so it cannot be built")
        if env.is_main:
            from icsd.data.text_teacher import build_text_cache

            print(f"building the text feature cache {text_path} with {data.text_teacher} "
                  f"({split.num_captions} captions, once)", flush=True)
            build_text_cache(text_path, data.text_teacher, split.captions, data.text_teacher_batch_size,
                             device=str(env.device))
        barrier()
    text = load_text_features(text_path, fingerprint, split.num_captions, data.text_teacher)
    return TeacherFeatures(image, text)


def build_train_pairs(cfg: Config, split: Split, teacher: Optional[TeacherFeatures],
                      transform: Callable, tokenizer: Callable) -> TrainPairs:
    return TrainPairs(split, transform, tokenizer,
                      teacher.image if teacher else None, teacher.text if teacher else None)
