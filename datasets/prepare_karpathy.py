"""Split JSONs (``{split}.json``: one ``{image_path, caption, image_id}`` record per caption) from
Karpathy's split file, after checking that every image exists. Run from the repository root:

    python datasets/prepare_karpathy.py --karpathy datasets/coco/dataset_coco.json \\
        --root datasets/coco --images images
    python datasets/prepare_karpathy.py --karpathy datasets/flickr30k/dataset_flickr30k.json \\
        --root datasets/flickr30k --images flickr30k-images

COCO: train = train + restval (113,287 images), val 5,000, test 5,000. See datasets/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsd.features.cli import add_split_output_arguments, run_cli  # noqa: E402
from icsd.features.karpathy import karpathy_records  # noqa: E402
from icsd.features.split_writer import write_splits  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--karpathy", required=True, help="dataset_coco.json or dataset_flickr30k.json")
    add_split_output_arguments(parser, "image folder under the root, holding <filepath>/<filename> (COCO: "
                                       "train2014/, val2014/) or <filename> (Flickr30K)",
                               "image_id = the image file name (default) or its stem")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        splits = karpathy_records(args.karpathy, args.images, args.id_style)
        written = write_splits(splits, args.root, args.out, {name: args.karpathy for name in splits},
                               check_images=not args.no_check_images)
        for name, (images, captions, path) in written.items():
            print(f"{name}: {images} images, {captions} captions -> {path}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
