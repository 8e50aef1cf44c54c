"""The training entry point: ``retrieval.py`` (and ``python -m icsd.train``) train a config, or evaluate it
(``--eval``), or check its data (``--check-data``), single process or under torchrun / srun."""
from __future__ import annotations

import argparse
import os
from typing import Optional

import yaml

from icsd.checkpoint import load_checkpoint
from icsd.cli import report_error, run_main
from icsd.config import config_to_dict, load_config
from icsd.data.check import check_data
from icsd.errors import CheckpointError, ConfigError, ICSDError
from icsd.evaluate import run_evaluation
from icsd.files import require_file
from icsd.logger import setup_logging
from icsd.losses import needs_teacher_features
from icsd.runs import LAST
from icsd.train.trainer import run_training

EPILOG = """Every config key, its default and meaning: docs/config.md (generated from the schema,
icsd/config.py). --print-config shows the resolved config of a YAML file with its --opts."""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --opts train.epochs=5 loss.soft_label.alpha=0")
    parser.add_argument("--resume", default=None, help="'auto' (the run folder's last checkpoint) or a path")
    parser.add_argument("--force-unlock", action="store_true",
                        help="with --resume: take over the run folder's lease even if its holder looks alive (for a "
                             "holder you know is dead, e.g. on a node that failed)")
    parser.add_argument("--eval", action="store_true", help="only evaluate (the --resume checkpoint, if any)")
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument("--check-data", action="store_true",
                        help="check the configured splits (records, teacher features) and decode every image in "
                             "parallel (data.num_workers); list every failure and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (after _base_ and --opts) as YAML and exit")
    return parser.parse_args(argv)


def eval_checkpoint(resume: Optional[str], run_dir: str) -> Optional[str]:
    """``--eval``'s checkpoint: ``--resume auto`` is the run folder's last one, which must exist."""
    if resume == "auto":
        resume = os.path.join(run_dir, LAST)
        if not os.path.isfile(resume):
            raise CheckpointError(f"--eval --resume auto: no {resume} to evaluate")
    elif resume is not None:
        require_file(resume, "--resume", CheckpointError, "checkpoint")
    return resume


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
    if args.force_unlock and args.resume is None:
        report_error(ConfigError("--force-unlock takes over a run folder to continue it: use it with --resume"))
        return 1

    def body(env):
        if args.check_data:
            check_data(cfg, with_teachers=needs_teacher_features(cfg.loss))
        elif args.eval:
            checkpoint = eval_checkpoint(args.resume, cfg.run_dir)
            weights = load_checkpoint(checkpoint, "--resume")["model"] if checkpoint else None
            run_evaluation(cfg, env, weights, cfg.eval.splits, source=checkpoint or "")
        else:
            run_training(cfg, env, args.resume, args.force_unlock)

    return run_main(body, cfg.train.device, cfg.train.dist_timeout_minutes)
