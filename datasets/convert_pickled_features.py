"""Convert a released pickled-dict feature file (``np.save`` of ``{image_id: array (1, D) or (D,)}``,
e.g. ICSD/CUSA's Unicom features) to the project's layout: a float16 ``[N, D]`` ``.npy`` opened with
``mmap_mode="r"`` + a ``.meta.json`` sidecar listing the image_id of each row. Rows are streamed, so
memory never holds a second copy. Run from the repository root:

    python datasets/convert_pickled_features.py released/train_unicom.npy datasets/coco/train_unicom.npy \\
        --annotation datasets/coco/train.json

See datasets/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsd.features.cli import run_cli  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="the released pickled-dict .npy file")
    parser.add_argument("dst", help="the output .npy (its sidecar is written beside it); not the same file")
    parser.add_argument("--model", default="unicom", help="teacher name recorded in the sidecar (default unicom)")
    parser.add_argument("--mode", default="released", help="feature mode recorded in the sidecar")
    parser.add_argument("--annotation", default=None,
                        help="a split JSON: check that each of its image_ids has a row afterwards")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        from icsd.data.annotations import load_split
        from icsd.data.features import load_image_features
        from icsd.errors import DataError
        from icsd.features.pickled import convert_pickled_dict

        if os.path.abspath(args.src) == os.path.abspath(args.dst):
            raise DataError(f"{args.src}: converting in place would destroy the original; give another dst "
                            f"(move the released file aside first)")
        rows = convert_pickled_dict(args.src, args.dst, args.model, args.mode)
        features = load_image_features(args.dst)
        print(f"{args.src} -> {args.dst}: {rows} rows x {features.dim} (float16)")
        if args.annotation:
            split = load_split("check", args.annotation, os.path.dirname(args.annotation), check_images=False)
            features.rows_for(split.image_ids)
            print(f"all {split.num_images} images of {args.annotation} have a feature")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
