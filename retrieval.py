"""Train ICSD (or evaluate with --eval). Single process or ``torchrun --nproc_per_node=N retrieval.py``.

    python retrieval.py --config configs/example/icsd.yaml
    torchrun --nproc_per_node=4 retrieval.py --config configs/vitb32/coco/icsd.yaml
"""
from __future__ import annotations

import argparse
import sys

import yaml

from icsd.checkpoint import load_checkpoint
from icsd.cli import report_error, run_main
from icsd.config import config_to_dict, load_config
from icsd.data.check import check_data
from icsd.errors import CheckpointError, ICSDError
from icsd.evaluate import run_evaluation
from icsd.logger import setup_logging
from icsd.losses import needs_teacher_features
from icsd.processes import exit_promptly
from icsd.train.trainer import resolve_resume, run_training

EPILOG = """Every config key, its default and meaning: README.md, section "Config reference" (the schema is
icsd/config.py). --print-config shows the resolved config of a YAML file with its --opts."""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --opts train.epochs=5 loss.soft_label.alpha=0")
    parser.add_argument("--resume", default=None, help="'auto' (the run folder's last checkpoint) or a path")
    parser.add_argument("--eval", action="store_true", help="only evaluate (the --resume checkpoint, if any)")
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument("--check-data", action="store_true",
                        help="check the configured splits (records, teacher features) and decode every image in "
                             "parallel (data.num_workers); list every failure and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (after _base_ and --opts) as YAML and exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, args.opts + ([f"seed={args.seed}"] if args.seed is not None else []))
    except ICSDError as exc:
        report_error(exc)
        return 1
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0

    def body(env):
        if args.check_data:
            check_data(cfg, with_teachers=needs_teacher_features(cfg.loss))
        elif args.eval:
            checkpoint = resolve_resume(args.resume, cfg.run_dir)
            if args.resume is not None and checkpoint is None:
                raise CheckpointError(f"--eval --resume auto: no {cfg.run_dir}/checkpoint_last.pth to evaluate")
            weights = load_checkpoint(checkpoint)["model"] if checkpoint else None
            run_evaluation(cfg, env, weights, cfg.eval.splits, source=checkpoint or "")
        else:
            run_training(cfg, env, args.resume)

    return run_main(body, cfg.train.device, cfg.train.dist_timeout_minutes)


if __name__ == "__main__":
    sys.exit(exit_promptly(main))
