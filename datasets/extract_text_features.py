"""Text-teacher features of every caption of each split (the cache training reads), in the project's
layout (float16 ``[num_records, D]`` ``.npy`` + sidecar with the teacher's name and the fingerprint of the
preprocessed captions), batched and resumable. Training builds a missing cache itself with the same
code; this command builds it ahead (e.g. on a GPU node). Run from the repository root:

    python datasets/extract_text_features.py --config configs/vitb32/coco/icsd.yaml
    python datasets/extract_text_features.py --root datasets/coco --teacher all-mpnet-base-v2 --out "{split}_mpnet.npy"
    # a local copy of the model, recorded under its usual name
    python datasets/extract_text_features.py --root datasets/coco --teacher all-mpnet-base-v2 \\
        --source /models/all-mpnet-base-v2 --out "{split}_mpnet.npy"

See datasets/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsd.features.cli import add_data_arguments, default_device, resolve_data_arguments, run_cli  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, "--out", 'output file pattern under the root (default: the config\'s '
                                        'data.text_features, else "{split}_mpnet.npy")')
    parser.add_argument("--teacher", dest="text_teacher", default=None,
                        help="sentence-transformers model name or local path, recorded in the sidecar "
                             "(default: the config's data.text_teacher, else all-mpnet-base-v2)")
    parser.add_argument("--source", default=None, help="load the model from here instead (a local copy)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    parser.add_argument("--flush-every", type=int, default=20, help="checkpoint progress every N batches")
    parser.add_argument("--max-batches", type=int, default=None, help="stop (resumably) after N batches per split")
    parser.add_argument("--overwrite", action="store_true", help="recompute even a complete file of the same job")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        from icsd.data.annotations import load_split
        from icsd.errors import ConfigError
        from icsd.features.text import extract_text_features, load_sentence_model

        resolve_data_arguments(args, "text_features", extra=("text_teacher",))
        if not args.text_teacher:
            raise ConfigError("no text teacher: give --teacher (or a config with data.text_teacher)")
        splits = [load_split(name, os.path.join(args.root, args.annotation.format(split=name)), args.root,
                             args.max_words, check_images=False) for name in args.splits]
        device = default_device(args.device)
        model = load_sentence_model(args.source or args.text_teacher, device)
        for split in splits:
            out = os.path.join(args.root, args.out.format(split=split.name))
            done = extract_text_features(out, args.text_teacher, split.captions, model=model,
                                         batch_size=args.batch_size, show_progress=not args.no_progress,
                                         flush_every=args.flush_every, max_batches=args.max_batches,
                                         overwrite=args.overwrite)
            state = "done" if done else "stopped (rerun the same command to continue)"
            print(f"{split.name}: {split.num_captions} captions -> {out} [{state}]", flush=True)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
