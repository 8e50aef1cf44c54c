"""Evaluate a checkpoint: Recall@K table on a split, optionally written as JSON.

    python evaluation.py --checkpoint output/example/icsd_seed42/checkpoint_best.pth --split val
"""
from __future__ import annotations

import argparse
import sys

from icsd.cli import report_error, run_main
from icsd.errors import ICSDError
from icsd.evaluate import run_evaluation
from icsd.files import require_creatable_file, write_json
from icsd.logger import setup_logging
from icsd.pretrained import config_for_weights, load_checkpoint_or_export
from icsd.processes import exit_promptly


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="an ICSD checkpoint (.pth) or an export folder (python -m icsd.export)")
    parser.add_argument("--config", default=None, help="YAML config (default: the one saved in the checkpoint)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    parser.add_argument("--split", nargs="+", default=["test"], help="split(s) to evaluate (default: test)")
    parser.add_argument("--out", default=None, help="write the metrics to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        if args.out:
            require_creatable_file(args.out, "--out")
        state = load_checkpoint_or_export(args.checkpoint, "--checkpoint")
        cfg = config_for_weights(state, args.checkpoint, args.config, args.opts)
    except ICSDError as exc:
        report_error(exc)
        return 1

    def body(env):
        results = run_evaluation(cfg, env, state["model"], args.split, source=args.checkpoint)
        if args.out and env.is_main:
            write_json(args.out, results, "metrics", indent=2)

    return run_main(body, cfg.train.device, cfg.train.dist_timeout_minutes)


if __name__ == "__main__":
    sys.exit(exit_promptly(main))
