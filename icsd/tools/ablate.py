"""Run an ablation: every (config, seed) in turn, resumable, then the report table of those runs.

    python -m icsd.ablate --configs configs/vitb32/coco/{contrastive,soft_external,isf,icsd}.yaml \\
        --seeds 1 2 3 --nproc 4 --baseline contrastive

Each run is ``python -m icsd.train --config A --seed S --resume auto [--opts ...]`` (the entry point of
``retrieval.py``, found through the package from any folder) in a subprocess (through ``torchrun --standalone
--nproc_per_node N`` with ``--nproc N``). A run whose log reached
``train.epochs`` and whose ``checkpoint_last.pth`` exists is skipped; any other continues from its last
checkpoint (``--resume auto``), so rerunning the same command after an interruption or a failure finishes
what is left. The first failing run stops the ablation with its exit code.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

from icsd.config import load_config
from icsd.errors import ICSDError
from icsd.runs import LAST, LOG, SEED_SUFFIX, read_log, short_names
from icsd.tools.command import run_command
from icsd.tools.report import names_group, report

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Job:
    config: str
    seed: Optional[int]  # None: the config's own seed
    run_dir: str
    epochs: int
    command: list[str]


def run_is_finished(run_dir: str, epochs: int) -> bool:
    """The log's last epoch reached ``epochs`` and the last checkpoint is there."""
    log = os.path.join(run_dir, LOG)
    if not (os.path.isfile(log) and os.path.isfile(os.path.join(run_dir, LAST))):
        return False
    records = read_log(log)
    return bool(records) and records[-1]["epoch"] >= epochs


def command_for(config: str, seed: Optional[int], opts: list[str], nproc: Optional[int], python: str) -> list[str]:
    """``retrieval.py``'s entry point as ``python -m icsd.train`` (found through the package, from any folder)."""
    launcher = [python] if not nproc else [python, "-m", "torch.distributed.run", "--standalone",
                                           f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "icsd.train", "--config", config, *(["--seed", str(seed)] if seed is not None else []),
            "--resume", "auto", *(["--opts", *opts] if opts else [])]


def plan(configs: list[str], seeds: list[Optional[int]], opts: list[str], nproc: Optional[int] = None,
         python: str = sys.executable) -> list[Job]:
    """The jobs in order (configs outer, seeds inner). Every config is loaded first, so a typo in the
    last one stops the ablation before the first run starts."""
    jobs = []
    for config in configs:
        for seed in seeds:
            cfg = load_config(config, opts + ([f"seed={seed}"] if seed is not None else []))
            command = command_for(config, seed, opts, nproc, python)
            jobs.append(Job(config, seed, cfg.run_dir, cfg.train.epochs, command))
    return jobs


def run_jobs(jobs: list[Job], dry_run: bool = False) -> int:
    """Run the unfinished jobs in turn; the exit code of the first that fails, else 0."""
    for i, job in enumerate(jobs, 1):
        tag = f"[{i}/{len(jobs)}] {job.run_dir}"
        if run_is_finished(job.run_dir, job.epochs):
            logger.info(f"{tag}: skip (finished, {job.epochs} epochs)")
            continue
        logger.info(f"{tag}: {'would run' if dry_run else 'run'}: {shlex.join(job.command)}")
        if dry_run:
            continue
        code = subprocess.call(job.command)
        if code != 0:
            logger.error(f"error: {job.run_dir} failed (exit code {code}); rerun the same command to continue "
                         f"(finished runs are skipped, the others resume)")
            return code
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m icsd.ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", required=True, metavar="YAML", help="the configs, run in order")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: each config's own)")
    parser.add_argument("--nproc", type=int, default=None, help="processes per run (torchrun --standalone)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides passed to every run")
    parser.add_argument("--baseline", default=None, help="report deltas to this config's row (e.g. contrastive)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and skips), run nothing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        if args.nproc is not None and args.nproc < 1:
            raise ICSDError("--nproc must be >= 1")
        jobs = plan(args.configs, args.seeds or [None], args.opts, args.nproc)
        groups = list(dict.fromkeys(SEED_SUFFIX.sub("", os.path.normpath(job.run_dir)) for job in jobs))
        names = sorted(short_names(groups).values())  # as the report will show them
        if args.baseline is not None and not any(names_group(args.baseline, n) for n in names):
            # found out now, not after the runs
            raise ICSDError(f"--baseline {args.baseline} is none of the runs' configs ({', '.join(names)})")
        code = run_jobs(jobs, args.dry_run)
        if code != 0 or args.dry_run:
            return code
        print(report([job.run_dir for job in jobs], args.baseline), flush=True)  # the command's output
        return 0

    return run_command(body)

