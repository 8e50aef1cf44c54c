"""Split JSONs (``{split}.json``: one ``{image_path, caption, image_id}`` record per caption) from
ALBEF-style annotation files, after checking that every image exists. Run from the repository root:

    python datasets/prepare_albef.py --root datasets/coco --images images \\
        --train ann/coco_train.json --val ann/coco_val.json --test ann/coco_test.json
    python datasets/prepare_albef.py --root datasets/flickr30k --images . \\
        --train ann/flickr30k_train.json --val ann/flickr30k_val.json --test ann/flickr30k_test.json

Train records ``{image, caption, image_id}``; val/test records ``{image, caption: [...]}`` whose image_id
is taken from the image file name. See datasets/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsd.features.albef import albef_records  # noqa: E402
from icsd.features.cli import add_split_output_arguments, run_cli  # noqa: E402
from icsd.features.split_writer import write_splits  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}", default=None, help=f"ALBEF-style {split} file")
    add_split_output_arguments(parser, "folder under the root that the files' 'image' paths are relative to",
                               "image_id of records without one: the image file name (default) or its stem")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sources = {s: getattr(args, s) for s in ("train", "val", "test") if getattr(args, s)}
    if not sources:
        print("error: give at least one of --train, --val, --test", file=sys.stderr)
        return 2

    def body():
        splits = {name: albef_records(path, args.images, args.id_style) for name, path in sources.items()}
        written = write_splits(splits, args.root, args.out, sources,
                               check_images=not args.no_check_images)
        for name, (images, captions, path) in written.items():
            print(f"{name}: {images} images, {captions} captions -> {path}  (from {sources[name]})")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
