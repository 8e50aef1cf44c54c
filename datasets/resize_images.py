"""Prepare a resized image cache for training (SPEC section 10): every image's shorter side resized to the
model's input size, saved as JPEG, in parallel and resumably; then point ``data.image_root`` at it.

    python datasets/resize_images.py --config configs/vitb32/coco/icsd.yaml --out datasets/coco/images_224
    python datasets/resize_images.py --root datasets/coco --splits train --size 336 --quality 95 \\
        --workers 16 --out datasets/coco/images_336
    python retrieval.py --config configs/vitb32/coco/icsd.yaml --opts data.image_root=images_224

The same command as ``python -m icsd.prep resize``; ``--help`` lists every option (see icsd/prep/resize.py).
"""
import sys

if __name__ == "__main__":
    from icsd.prep.__main__ import main

    sys.exit(main(["resize", *sys.argv[1:]]))
