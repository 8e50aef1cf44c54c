"""The run folder: the names of what training writes there (defined here only), and reading finished or
running run folders (``config.yaml``, ``log.jsonl``, eval JSONs) without torch.

Kept free of torch and the model code so that ``icsd.report`` and ``icsd.plot`` start in well under a
second and read hundreds of run folders quickly.

Conventions (documented in docs/tools.md):

- a run folder is a folder holding ``log.jsonl`` or ``config.yaml`` (what ``retrieval.py`` writes);
- runs are grouped by their run folder path without the ``_seed{N}`` suffix (that is, by the config's
  ``output_dir``): the seeds of one config form one group;
- ``eval_best*.json`` files in a run folder are ``evaluation.py --out`` results of ``checkpoint_best.pth``
  (``evaluation.py --checkpoint RUN/checkpoint_best.pth --split test --out RUN/eval_best.json``); their
  splits replace the log's metrics of the best epoch for those splits.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from icsd.errors import ICSDError
from icsd.files import read_json, read_json_lines, read_yaml

logger = logging.getLogger(__name__)

# What training writes in a run folder.
LOG = "log.jsonl"                    # one JSON line per finished epoch
CONFIG = "config.yaml"               # the resolved config
OUT_LOG = "out.log"                  # everything rank 0 printed, with times
LAST = "checkpoint_last.pth"         # the last finished epoch, or a recovery checkpoint inside the next one
BEST = "checkpoint_best.pth"         # a hard link to the best epoch's checkpoint_last.pth
LEASE = "run.lock"                   # the lease of the run that writes the folder
TENSORBOARD_DIR = "tensorboard"      # train.report_to: [tensorboard]
WANDB_ID_FILE = "wandb_run_id"       # train.report_to: [wandb]: the W&B run a resumed run continues
EVAL_JSON_PATTERN = "eval_best*.json"  # evaluation.py --out results of checkpoint_best.pth
SEED_SUFFIX = re.compile(r"_seed(\d+)$")


def epoch_checkpoint(epoch: int) -> str:
    """``train.save_every``'s per-epoch checkpoint (a hard link to that epoch's checkpoint_last.pth)."""
    return f"checkpoint_epoch{epoch}.pth"


class ReportError(ICSDError):
    """Run folders that cannot be reported: none found, an unknown baseline, a bad eval JSON."""


@dataclass
class Run:
    """One run folder as read from disk."""

    path: str
    group: str  # the run folder path without its _seed{N} suffix
    seed: Optional[int]
    config: dict
    records: list[dict]  # the log's lines, one per epoch, in epoch order (epoch 0: before training)
    eval_results: dict[str, dict[str, float]] = field(default_factory=dict)  # from eval_best*.json

    @property
    def last_epoch(self) -> int:
        return self.records[-1]["epoch"] if self.records else 0

    @property
    def epochs(self) -> Optional[int]:
        value = self.config.get("train", {}).get("epochs")
        return value if isinstance(value, int) else None

    @property
    def finished(self) -> bool:
        """The log reached ``train.epochs`` (a run without a readable config counts as finished)."""
        return self.epochs is None or self.last_epoch >= self.epochs

    @property
    def best_epoch(self) -> Optional[int]:
        """The epoch the trainer selected (``best_epoch`` of the log's last line), as checkpoint_best."""
        for record in reversed(self.records):
            if record.get("best_epoch") is not None:
                return record["best_epoch"]
        return None

    def split_metrics(self, split: str) -> dict[str, float]:
        """``split``'s metrics of the best checkpoint: an eval JSON's when there is one, else the best
        epoch's log line's; {} when neither holds the split."""
        if split in self.eval_results:
            return {k: v for k, v in self.eval_results[split].items() if is_number(v)}
        best = self.best_epoch
        record = next((r for r in self.records if r.get("epoch") == best), None) if best is not None else None
        if record is None:
            return {}
        prefix = f"{split}_"
        return {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix) and is_number(v)}


def read_log(path: str) -> list[dict]:
    """The log's records in epoch order, one per epoch: a later line for an epoch replaces an earlier one
    (a resumed run rewrites what came after its checkpoint), a line cut short by a crash is skipped."""
    by_epoch: dict[int, dict] = {}
    for record in read_json_lines(path):
        try:
            by_epoch[int(record["epoch"])] = record
        except (KeyError, TypeError, ValueError):
            continue
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_eval_json(path: str) -> dict[str, dict[str, float]]:
    """An ``evaluation.py --out`` file: ``{split: {metric: number}}``."""
    data = read_json(path, "evaluation JSON", ReportError)
    ok = isinstance(data, dict) and all(
        isinstance(m, dict) and all(isinstance(v, (int, float)) for v in m.values()) for m in data.values())
    if not ok:
        raise ReportError(f"{path}: expected evaluation.py's output {{split: {{metric: value}}}}")
    return data


def read_run(path: str) -> Run:
    """Read one run folder (it must hold ``log.jsonl``)."""
    config = {}
    config_path = os.path.join(path, CONFIG)
    if os.path.isfile(config_path):
        config = read_yaml(config_path, "run config", ReportError) or {}
        if not isinstance(config, dict):
            raise ReportError(f"{config_path}: not a config mapping")
    eval_results: dict[str, dict[str, float]] = {}
    for eval_path in sorted(glob.glob(os.path.join(path, EVAL_JSON_PATTERN))):
        eval_results.update(read_eval_json(eval_path))
    norm = os.path.normpath(path)
    match = SEED_SUFFIX.search(norm)
    return Run(path=norm, group=norm[:match.start()] if match else norm,
               seed=int(match.group(1)) if match else config.get("seed"), config=config,
               records=read_log(os.path.join(path, LOG)), eval_results=eval_results)


def is_run_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, LOG)) or os.path.isfile(os.path.join(path, CONFIG))


def find_run_folders(patterns: list[str]) -> list[str]:
    """Run folders named by paths or globs; a folder that is not a run folder is searched one level down
    (``output/example/`` finds every run of the example configs). In the order given (a glob's or a
    folder's matches sorted), without duplicates: the report lists configs in that order."""
    found: list[str] = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not paths:
            raise ReportError(f"no folder matches {pattern}")
        for path in paths:
            if not os.path.isdir(path):
                if not glob.has_magic(pattern):
                    raise ReportError(f"not a folder: {path}")
                continue
            if is_run_folder(path):
                found.append(os.path.normpath(path))
            else:
                children = [c for c in sorted(glob.glob(os.path.join(path, "*"))) if os.path.isdir(c)
                            and is_run_folder(c)]
                if not children and not glob.has_magic(pattern):
                    raise ReportError(f"{path} is not a run folder (no {LOG} or {CONFIG}) and holds none")
                found.extend(os.path.normpath(c) for c in children)
    return list(dict.fromkeys(found))


def load_runs(patterns: list[str]) -> list[Run]:
    """Every run folder named by ``patterns``; one without a ``log.jsonl`` (not started, or only its
    config written) is named on stderr and skipped."""
    runs = []
    for path in find_run_folders(patterns):
        if not os.path.isfile(os.path.join(path, LOG)):
            logger.warning(f"skipped {path}: no {LOG}")
            continue
        runs.append(read_run(path))
    if not runs:
        raise ReportError(f"no run folder with a {LOG} in {' '.join(patterns)}")
    return runs


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by group: groups in the order their first run comes, each group's runs by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return {g: sorted(members, key=lambda r: (r.seed if r.seed is not None else -1, r.path))
            for g, members in groups.items()}


def short_names(groups: list[str]) -> dict[str, str]:
    """The fewest trailing path components that tell the groups apart (``icsd``, or ``coco/icsd`` and
    ``flickr/icsd`` when both are reported)."""
    parts = {g: g.replace(os.sep, "/").split("/") for g in groups}
    for depth in range(1, max((len(p) for p in parts.values()), default=1) + 1):
        names = {g: "/".join(p[-depth:]) for g, p in parts.items()}
        if len(set(names.values())) == len(names):
            return names
    return {g: g for g in groups}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
