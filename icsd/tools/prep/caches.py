"""``python -m icsd.prep pixels`` / ``tokens``: a config's pixel and token caches, built ahead of training (the
code is ``icsd.data.caches``', which training also runs on first use)."""
from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)

USAGE = """The pixel cache (data.pixel_cache: every image of a split decoded once, through the model's transform,
into a uint8 [N, 3, S, S] .npy) or the token cache (data.token_cache: every caption's tokens) of a config's
splits, resumable and exact. Training builds a missing cache itself, the main rank decoding in parallel over
data.num_workers processes; this command builds it ahead (on a CPU node, say). Run from the repository root:

    python -m icsd.prep pixels --config configs/vitb32/coco/icsd.yaml            # train, val and test
    python -m icsd.prep pixels --config configs/vitl14_336/coco/icsd.yaml --splits train --workers 32
    python -m icsd.prep tokens --config configs/vitb32/coco/icsd.yaml
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the training config: its data section and model")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits (default: data.train_split and eval.splits)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: data.num_workers)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild the cache (a stale one is refused "
                                                                   "otherwise)")


def build(args: argparse.Namespace, kind: str) -> None:
    import dataclasses

    from icsd.config import load_config
    from icsd.data.build import load_data_split
    from icsd.data.caches import cache_path, pixel_rows, token_rows
    from icsd.errors import ConfigError
    from icsd.models.backbone import build_backbone

    cfg = load_config(args.config, args.opts)
    data = cfg.data if args.workers is None else dataclasses.replace(cfg.data, num_workers=args.workers)
    pattern = data.pixel_cache if kind == "pixels" else data.token_cache
    if pattern is None:
        raise ConfigError(f"data.{'pixel' if kind == 'pixels' else 'token'}_cache is null in {args.config}: set "
                          f"it (--opts data.{'pixel' if kind == 'pixels' else 'token'}_cache='{{split}}_...npy')")
    # the transform and tokenizer need the architecture only: no pretrained weights are loaded
    backbone = build_backbone(dataclasses.replace(cfg.model, pretrained=None), weights_follow=True)
    for name in args.splits or list(dict.fromkeys([data.train_split, *cfg.eval.splits])):
        split = load_data_split(data, name)
        path = cache_path(data, pattern, split)
        if kind == "pixels":
            pixel_rows(data, split, backbone.pixels.host, overwrite=args.overwrite)
        else:
            token_rows(data, split, backbone.tokenizer, backbone.clip.context_length, overwrite=args.overwrite)
        logger.info(f"{name}: {path} [done]")


def run_pixels(args: argparse.Namespace) -> None:
    build(args, "pixels")


def run_tokens(args: argparse.Namespace) -> None:
    build(args, "tokens")
