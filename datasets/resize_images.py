"""Prepare a resized image cache for training (docs/benchmarks.md): every image's shorter side resized to the
model's input size, saved as JPEG, in parallel and resumably; then point ``data.image_root`` at it.

    python datasets/resize_images.py --config configs/vitb32/coco/icsd.yaml --out datasets/coco/images_224
    python datasets/resize_images.py --root datasets/coco --splits train --size 336 --quality 95 \\
        --workers 16 --out datasets/coco/images_336
    python retrieval.py --config configs/vitb32/coco/icsd.yaml --opts data.image_root=images_224

The command `python -m icsd.prep resize`; `--help` lists every option, and datasets/README.md the whole
preparation. Run from the repository root with the project installed (`pip install -e .`, which `make` does).
"""
import sys

from icsd.tools.prep.__main__ import command

main = command("resize")

if __name__ == "__main__":
    sys.exit(main())
