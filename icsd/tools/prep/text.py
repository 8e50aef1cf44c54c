"""``python -m icsd.prep extract-text``: the text-teacher feature cache of every split, ahead of training
(``icsd.data.text_cache`` holds the code, which training also runs on first use)."""
from __future__ import annotations

import argparse
import logging
import os

from icsd.data.annotations import load_split
from icsd.data.text_cache import extract_text_features, load_sentence_model
from icsd.errors import ConfigError
from icsd.tools.prep.common import add_data_arguments, add_extraction_arguments, default_device, resolve_data_arguments

logger = logging.getLogger(__name__)

USAGE = """Text-teacher features of every caption of each split (the cache training reads), in the project's
layout (float16 [num_records, D] .npy + sidecar with the teacher's name and the fingerprint of the
preprocessed captions), batched and resumable. Training builds a missing cache itself with the same
code; this command builds it ahead (e.g. on a GPU node). Run from the repository root:

    python -m icsd.prep extract-text --config configs/vitb32/coco/icsd.yaml
    python datasets/extract_text_features.py --root datasets/coco --teacher all-mpnet-base-v2 --out "{split}_mpnet.npy"
    # a local copy of the model, recorded under its usual name
    python datasets/extract_text_features.py --root datasets/coco --teacher all-mpnet-base-v2 \\
        --source /models/all-mpnet-base-v2 --out "{split}_mpnet.npy"
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, "--out", 'output file pattern under the root (default: the config\'s '
                                        'data.text_features, else "{split}_mpnet.npy")')
    parser.add_argument("--teacher", dest="text_teacher", default=None,
                        help="sentence-transformers model name or local path, recorded in the sidecar "
                             "(default: the config's data.text_teacher, else all-mpnet-base-v2)")
    parser.add_argument("--source", dest="text_teacher_source", default=None,
                        help="load the model from here instead, a local copy (default: the config's "
                             "data.text_teacher_source)")
    parser.add_argument("--batch-size", type=int, default=256)
    add_extraction_arguments(parser)


def run(args: argparse.Namespace) -> None:
    resolve_data_arguments(args, "text_features", extra=("text_teacher", "text_teacher_source"))
    if not args.text_teacher:
        raise ConfigError("no text teacher: give --teacher (or a config with data.text_teacher)")
    splits = [load_split(name, os.path.join(args.root, args.annotation.format(split=name)), args.root,
                         args.max_words, check_images=False) for name in args.splits]
    model = load_sentence_model(args.text_teacher_source or args.text_teacher, default_device(args.device))
    for split in splits:
        out = os.path.join(args.root, args.out.format(split=split.name))
        done = extract_text_features(out, args.text_teacher, split.captions, model=model,
                                     batch_size=args.batch_size, show_progress=not args.no_progress,
                                     flush_every=args.flush_every, max_batches=args.max_batches,
                                     overwrite=args.overwrite)
        state = "done" if done else "stopped (rerun the same command to continue)"
        logger.info(f"{split.name}: {split.num_captions} captions -> {out} [{state}]")
