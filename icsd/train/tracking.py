"""Experiment trackers for ``train.report_to``: TensorBoard and Weights & Biases (optional dependencies).

Rank 0 writes ``train/*`` scalars every ``train.log_every`` steps (loss terms, lr, temperatures, samples/s,
data time share; step = optimizer steps so far) and ``{split}/*`` metrics with the epoch's training means
(``epoch/*``) once per epoch (step = epoch). A tracker that is not installed stops the run at its start.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
from typing import Protocol

from icsd.config import Config, config_to_dict
from icsd.errors import ConfigError
from icsd.files import write_text
from icsd.runs import TENSORBOARD_DIR, WANDB_ID_FILE

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def check_trackers(report_to: list[str]) -> None:
    """Stop before any work when a tracker named in ``train.report_to`` is not installed."""
    for name in report_to:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"train.report_to names {name}, which is not installed: pip install {PACKAGES[name]} "
                              f"(or pip install 'icsd[track]')")


class TensorBoard:
    def __init__(self, run_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=os.path.join(run_dir, TENSORBOARD_DIR))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """One W&B run per run folder: its id is kept in the folder, so a resumed run continues it. Set
    ``WANDB_MODE=offline`` to log with no network (``wandb sync`` uploads later)."""

    def __init__(self, cfg: Config, run_dir: str):
        import wandb

        id_file = os.path.join(run_dir, WANDB_ID_FILE)
        run_id = open(id_file).read().strip() if os.path.isfile(id_file) else secrets.token_hex(4)
        write_text(id_file, run_id, "W&B run id")
        self.run = wandb.init(project=cfg.train.wandb_project, name=os.path.basename(run_dir), id=run_id,
                              resume="allow", dir=run_dir, config=config_to_dict(cfg))
        # W&B has one increasing step per run: per-step and per-epoch series each get their own x axis.
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def log(self, scalars: dict[str, float], step: int) -> None:
        x_axis = "train/step" if all(k.startswith("train/") for k in scalars) else "epoch"
        self.run.log({**scalars, x_axis: step})

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of ``train.report_to`` (none on ranks other than 0): ``log`` goes to each, ``close`` ends
    them (a context manager)."""

    def __init__(self, cfg: Config, run_dir: str, enabled: bool = True):
        names = cfg.train.report_to if enabled else []
        self.trackers: list[Tracker] = [TensorBoard(run_dir) if name == "tensorboard" else WandB(cfg, run_dir)
                                        for name in names]

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(scalars, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
