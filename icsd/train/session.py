"""A training session: the training state with everything that works on it (the model as the step runs it,
the loss, the loader, the stop control, the run folder, the trackers, the evaluator), and what happens
between steps: recovery checkpoints, log intervals, the end of an epoch, a stop."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
from torch import nn

from icsd.config import Config
from icsd.distributed import DistEnv, all_gather_objects, run_on_main
from icsd.errors import OtherRankFailed
from icsd.evaluate import Evaluator, flat_metrics, format_table
from icsd.train.preemption import Preempted, StopControl, signal_name
from icsd.train.run_folder import RunFolder
from icsd.train.state import TrainState
from icsd.train.tracking import Trackers

logger = logging.getLogger(__name__)


@dataclass
class Session:
    cfg: Config
    env: DistEnv
    state: TrainState
    model: nn.Module  # what the step runs: the state's model, wrapped in DDP when distributed
    loss: Callable[[dict, dict], dict[str, torch.Tensor]]  # (model outputs, batch) -> loss terms and "loss"
    batches: object  # the training batches on the device (icsd.data.pixels.DeviceBatches)
    sampler: object  # the training sampler (icsd.train.trainer.ResumableSampler)
    updates_per_epoch: int
    folder: RunFolder
    evaluator: Evaluator
    trackers: Trackers
    control: Optional[StopControl] = None

    @property
    def select_key(self) -> str:
        return f"{self.cfg.eval.select_on}_{self.cfg.eval.select_metric}"

    def epoch_position(self, epoch: int):
        """Where ``epoch`` starts: its beginning, or where a resumed recovery checkpoint stopped inside it.
        The sampler skips the samples this rank already trained on."""
        from icsd.train.loop import EpochState

        position, self.state.position = self.state.position, None
        if position is None:
            start = EpochState(epoch, self.state.num_updates, self.state.optimizer.param_groups[0]["lr"])
        else:
            start = EpochState(**{**position, "sums": _rank_sums(position["sums"], self.env)})
        self.sampler.set_epoch(epoch)
        self.sampler.skip = start.update * self.cfg.train.accum_steps * self.cfg.train.batch_size
        return start

    def save_recovery(self, position) -> None:
        """A mid-epoch checkpoint (``checkpoint_last.pth`` with the position in the epoch); every rank waits
        until the main rank has written it (or failed to), so no rank exits while the save is under way."""
        where = {**position.as_dict(), "sums": all_gather_objects(position.sums)}  # one list per rank
        checkpoint = self.state.checkpoint(self.cfg, self.env, where)  # state.epoch: the last finished one
        run_on_main(self.env, partial(self.folder.save, checkpoint), "writing the recovery checkpoint")

    def log_interval(self, scalars: dict[str, float]) -> None:
        """The trackers' per-step scalars (rank 0, at each log interval)."""
        if self.trackers:
            temps = {f"train/{n}": t().item() for n, t in self.state.model.temperatures.items()}
            self.trackers.log({**{f"train/{k}": v for k, v in scalars.items()}, **temps}, self.state.num_updates)

    def evaluate_before_training(self) -> None:
        cfg = self.cfg
        if self.state.epoch == 0 and self.state.position is None and cfg.eval.eval_before_training \
                and self.evaluator.splits:
            results = self.evaluator.evaluate(self.state.model, cfg, self.env)
            logger.info(f"epoch 0 (before training)\n{format_table(results)}")
            self.state.records.append({"epoch": 0, **flat_metrics(results)})
            run_on_main(self.env, lambda: self.folder.write_log(self.state.records), "writing the log")

    def end_epoch(self, position, stats: dict, started: float) -> None:
        """Evaluate, select the best epoch, record, checkpoint (every rank waits for the save), show the
        epoch's line, and stop here if a signal came during the evaluation or the bookkeeping. ``position``:
        where the epoch started (``started``: then, by ``time.perf_counter``)."""
        state, cfg, epoch = self.state, self.cfg, position.epoch
        state.scheduler.step(epoch)
        results = self.evaluator.evaluate(state.model, cfg, self.env)
        metrics = flat_metrics(results)
        score = metrics.get(self.select_key)
        if score is not None and (state.best["score"] is None or score > state.best["score"]):
            state.best = {"score": score, "epoch": epoch}
        temps = {name: temp().item() for name, temp in state.model.temperatures.items()}
        state.records.append({"epoch": epoch, "lr": position.lr, **stats, **temps,
                              "epoch_seconds": time.perf_counter() - started + position.seconds, **metrics,
                              "best_epoch": state.best["epoch"], f"best_{self.select_key}": state.best["score"]})
        state.epoch = epoch
        run_on_main(self.env, partial(self.folder.commit_epoch, state.checkpoint(cfg, self.env)),
                    "writing the epoch's checkpoint")
        losses = ", ".join(f"{k[len('loss_'):]} {v:.4f}" for k, v in stats.items() if k.startswith("loss_"))
        logger.info(f"epoch {epoch}/{cfg.train.epochs}  loss {stats['loss']:.4f} ({losses})  "
                    f"{stats['samples_per_second']:.1f} samples/s" + (f"\n{format_table(results)}" if results else ""))
        self.trackers.log({**{f"{split}/{k}": v for split, m in results.items() for k, v in m.items()},
                           **{f"epoch/{k}": v for k, v in state.records[-1].items()
                              if k != "epoch" and isinstance(v, (int, float))}}, epoch)
        signum, _ = self.control.should_stop()
        if signum:
            raise Preempted(signum, f"stopped by {signal_name(signum)} after epoch {epoch}: {self.folder.last} holds "
                                    f"it; continue with --resume auto")

    def stop(self, stop) -> None:
        """Every rank stopped at the same step boundary: write the recovery checkpoint, then end the run."""
        self.save_recovery(stop.state)
        where = f"in epoch {stop.state.epoch} at step {stop.state.update}/{self.updates_per_epoch}"
        if stop.signum:
            raise Preempted(stop.signum, f"stopped by {signal_name(stop.signum)} {where}: recovery checkpoint "
                                         f"{self.folder.last}; continue with --resume auto")
        logger.info(f"stopped {where} on an unreadable training image: recovery checkpoint {self.folder.last} keeps "
                    f"the finished steps; fix or remove the image, then continue with --resume auto")
        if stop.error is not None:
            raise stop.error
        raise OtherRankFailed("another process met an unreadable image")

    def report_done(self) -> None:
        best = self.state.best
        done = f"done: {self.cfg.run_dir}"
        if best["epoch"] is not None:
            done += f" (best {self.select_key} {best['score']:.2f} at epoch {best['epoch']})"
        logger.info(done)


def _rank_sums(per_rank: list[list[float]], env: DistEnv) -> list[float]:
    """This rank's loss sums from a recovery checkpoint; on another number of processes rank 0 takes them
    all (the epoch's means are reduced over ranks, so the total is what matters)."""
    if len(per_rank) == env.world_size:
        return per_rank[env.rank]
    if env.rank == 0 and per_rank and per_rank[0]:
        return [sum(values) for values in zip(*per_rank)]
    return [0.0] * len(per_rank[0]) if per_rank and per_rank[0] else []
