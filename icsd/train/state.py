"""What a checkpoint holds: the training state (model, optimizer, schedule, AMP scaler, where training
stands) and every rank's RNG states, so that a resumed run continues exactly as an uninterrupted one."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch.optim import Optimizer

from icsd.config import Config, config_to_dict
from icsd.distributed import DistEnv, all_gather_objects
from icsd.models import ICSDModel

logger = logging.getLogger(__name__)


def rng_state(device: torch.device) -> dict:
    """This process's RNG states: Python, NumPy, torch CPU and its own CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """The state a checkpoint saves and a resume restores."""

    model: ICSDModel  # the plain model (DDP wraps it for the step)
    optimizer: Optimizer
    scheduler: object  # a timm scheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0  # the last finished epoch
    num_updates: int = 0  # optimizer steps since the start of training
    best: dict = field(default_factory=lambda: {"score": None, "epoch": None})
    records: list = field(default_factory=list)  # the log records of the finished epochs
    position: Optional[dict] = None  # where a recovery checkpoint stopped inside epoch ``epoch + 1``

    def checkpoint(self, cfg: Config, env: DistEnv, position: Optional[dict] = None) -> dict:
        """The checkpoint (a collective: every rank's RNG states are gathered)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
                "num_updates": self.num_updates, "best": self.best, "rng": all_gather_objects(rng_state(env.device)),
                "config": config_to_dict(cfg), "log": self.records, "position": position}

    def restore(self, checkpoint: dict, cfg: Config, env: DistEnv) -> None:
        """Everything but the model weights (loaded when the model is built) from ``checkpoint``."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler.is_enabled() and checkpoint["scaler"]:  # resumed in amp_fp16 from another precision: anew
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.num_updates, self.best = checkpoint["epoch"], checkpoint["num_updates"], checkpoint["best"]
        self.records, self.position = list(checkpoint.get("log") or []), checkpoint.get("position")
        if len(checkpoint["rng"]) == env.world_size:  # one per rank; on another number of processes: seed + rank
            set_rng_state(checkpoint["rng"][env.rank], env.device)
        elif self.position is not None:
            logger.warning(f"warning: the checkpoint stopped mid-epoch on {len(checkpoint['rng'])} processes; resumed "
                           f"on {env.world_size}: epoch {self.position['epoch']} continues after the same number of "
                           f"steps, not with the same batches")
        if checkpoint["config"]["train"]["epochs"] != cfg.train.epochs:
            logger.warning(f"warning: train.epochs is {cfg.train.epochs}, the checkpoint's run had "
                           f"{checkpoint['config']['train']['epochs']}: the restored schedule keeps its length")
