"""Arguments the preparation commands share, with data-section defaults from a training config."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence


def add_split_output_arguments(parser: argparse.ArgumentParser, images_help: str, id_style_help: str) -> None:
    """The split converters' ``--root``, ``--images``, ``--out``, ``--id-style`` and ``--no-check-images``."""
    parser.add_argument("--root", required=True, help="data root: the split JSONs are written here and image "
                                                      "paths are relative to it")
    parser.add_argument("--images", default="", help=images_help)
    parser.add_argument("--out", default="{split}.json",
                        help='output file pattern under the root (e.g. "new_{split}.json")')
    parser.add_argument("--id-style", choices=("filename", "stem"), default="filename", help=id_style_help)
    parser.add_argument("--no-check-images", action="store_true", help="do not check that every image exists")


def add_data_arguments(parser: argparse.ArgumentParser, features_flag: str, features_help: str) -> None:
    """``--config``, ``--root``, ``--annotation``, ``--splits``, ``--max-words`` and the output pattern."""
    parser.add_argument("--config", default=None,
                        help="a training config: its data section gives the defaults of the flags below")
    parser.add_argument("--root", default=None, help="data root (default: the config's data.root)")
    parser.add_argument("--annotation", default=None,
                        help='split file pattern under the root (default: the config\'s, else "{split}.json")')
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits to process")
    parser.add_argument("--max-words", type=int, default=None, help="caption length cut (default: config's, 64)")
    parser.add_argument(features_flag, dest="out", default=None, help=features_help)


def resolve_data_arguments(args: argparse.Namespace, features_key: str,
                           extra: Sequence[str] = ()) -> argparse.Namespace:
    """Fill unset data flags from ``--config`` (``data.<features_key>`` for the output pattern and the
    ``data.<name>`` of each flag in ``extra``), then from the defaults of the schema."""
    from icsd.config import DataConfig, load_config

    data = load_config(args.config).data if args.config else DataConfig()
    args.root = args.root if args.root is not None else data.root
    args.annotation = args.annotation or data.annotation
    args.max_words = args.max_words if args.max_words is not None else data.max_words
    args.out = args.out or getattr(data, features_key)
    for name in extra:
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(data, name))
    return args


def default_device(device: Optional[str]) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_extraction_arguments(parser: argparse.ArgumentParser) -> None:
    """The extractors' ``--device``, ``--flush-every``, ``--max-batches``, ``--overwrite``, ``--no-progress``."""
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--flush-every", type=int, default=20, help="checkpoint progress every N batches")
    parser.add_argument("--max-batches", type=int, default=None, help="stop (resumably) after N batches per split")
    parser.add_argument("--overwrite", action="store_true", help="recompute even a complete file of the same job")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
