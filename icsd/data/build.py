"""Everything a run reads from ``data.root``: splits, teacher features and the datasets over them.

Loading validates the input up front (annotations, images, teacher features), so bad data stops a run
before the model is built, not hours into training.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional

from icsd.config import Config, DataConfig
from icsd.data.annotations import Split, load_split
from icsd.data.captions import caption_fingerprint
from icsd.data.datasets import TrainPairs
from icsd.data.feature_file import MatrixRows
from icsd.data.image_cache import cache_root, with_prepared_images
from icsd.data.teacher_features import ImageFeatures, load_image_features, load_text_features
from icsd.errors import DataError


def data_path(data: DataConfig, pattern: str, split: str) -> str:
    return os.path.join(data.root, pattern.format(split=split))


def load_data_split(data: DataConfig, split: str) -> Split:
    if os.path.exists(data.root) and not os.path.isdir(data.root):
        raise DataError(f"data.root: {data.root} is a file, not a folder")
    if not os.path.isdir(data.root):
        raise DataError(f"data.root not found: {data.root} (see datasets/README.md to prepare a dataset)")
    return load_split(split, data_path(data, data.annotation, split), data.root, data.max_words)


def load_eval_splits(cfg: Config, names: list[str], known: Optional[dict[str, Split]] = None) -> dict[str, Split]:
    """The splits ``names`` of the data root, then every ``eval.extra`` dataset under its name (transfer
    evaluation); ``known`` splits are reused (the training split)."""
    known = known or {}
    splits = {n: known[n] if n in known else load_data_split(cfg.data, n) for n in names}
    for extra in cfg.eval.extra:
        if os.path.exists(extra.root) and not os.path.isdir(extra.root):
            raise DataError(f"eval.extra {extra.name}: root {extra.root} is a file, not a folder")
        if not os.path.isdir(extra.root):
            raise DataError(f"eval.extra {extra.name}: root not found: {extra.root}")
        path = os.path.join(extra.root, extra.annotation.format(split=extra.split))
        split = load_split(extra.split, path, extra.root, cfg.data.max_words)
        splits[extra.name] = dataclasses.replace(split, name=extra.name)
    return splits


def training_split(data: DataConfig, split: Split) -> Split:
    """The split the training loader reads: from the prepared image cache when ``data.image_root`` is set
    (checked now), else ``split`` itself. Evaluation keeps decoding the originals, so reported metrics
    stay comparable with runs without a cache."""
    root = cache_root(data)
    return split if root is None else with_prepared_images(split, root, data.root)


@dataclass
class TeacherFeatures:
    image: ImageFeatures
    text: MatrixRows


def load_teacher_features(data: DataConfig, split: Split) -> TeacherFeatures:
    """Open both teachers' features for ``split``, checked: every image_id has an image feature, and the
    text cache was built from exactly these captions (by ``data.text_teacher`` when it is set).

    A missing text cache is built beforehand by ``icsd.data.text_cache.ensure_text_cache`` (the trainer calls
    it), so loading data never runs a model."""
    image = load_image_features(data_path(data, data.image_features, split.name))
    image.rows_for(split.image_ids)  # every image_id has a feature, or a DataError names it
    text_path = data_path(data, data.text_features, split.name)
    text = load_text_features(text_path, caption_fingerprint(split.captions), split.num_captions, data.text_teacher)
    return TeacherFeatures(image, text)


def build_train_pairs(cfg: Config, split: Split, teacher: Optional[TeacherFeatures], transform: Callable,
                      tokenizer: Callable, inputs=None) -> TrainPairs:
    """The training pairs; ``inputs`` (``icsd.data.caches.SplitInputs``): the split's caches, when set."""
    return TrainPairs(split, transform, tokenizer, teacher.image if teacher else None,
                      teacher.text if teacher else None, inputs.images if inputs else None,
                      inputs.tokens if inputs else None)
