"""The training run: build everything from a config, train epoch by epoch, evaluate, checkpoint, log.

Bookkeeping survives a kill at any instant (SPEC section 5). Each checkpoint carries the log records of
every finished epoch, so ``log.jsonl`` is rewritten from the checkpoint a run resumes from; best and
per-epoch checkpoints are hard links to the epoch's ``checkpoint_last.pth``; every file is written under a
temp name and renamed, and a start removes the temp files a kill left. On resume, the links a kill may
have missed are made again from the checkpoint itself.
"""
from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import time
import warnings
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from icsd.checkpoint import load_checkpoint
from icsd.config import Config, config_to_dict, save_config
from icsd.data.annotations import Split
from icsd.data.build import build_train_pairs, load_data_split, load_teacher_features, training_split
from icsd.data.check import unreadable_images
from icsd.data.loaders import Loader
from icsd.data.pixels import DeviceBatches
from icsd.data.text_cache import ensure_text_cache
from icsd.distributed import DistEnv, all_gather_objects, broadcast_object
from icsd.errors import CheckpointError, ConfigError, DataError, ICSDError, OtherRankFailed
from icsd.evaluate import Evaluator, flat_metrics, format_table
from icsd.logger import OUT_LOG, log_to_file
from icsd.losses import needs_teacher_features
from icsd.models import ICSDModel, build_model_for
from icsd.processes import ignore_stop_signals
from icsd.train.checkpoint import (
    TMP_SUFFIX,
    link_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from icsd.train.engine import EpochState, EpochStop, train_one_epoch
from icsd.train.optim import build_optimizer, build_scheduler
from icsd.train.preemption import Preempted, StopControl, signal_name
from icsd.train.tracking import build_trackers, check_trackers

logger = logging.getLogger(__name__)

LAST, BEST, LOG = "checkpoint_last.pth", "checkpoint_best.pth", "log.jsonl"
KILL_AT_ENV = "ICSD_TEST_KILL_AT"  # fault injection for the tests: "point:epoch"


def kill_point(point: str, epoch: int) -> None:
    """End the process here, as ``kill -9`` would, when the tests ask for it (``ICSD_TEST_KILL_AT``)."""
    if os.environ.get(KILL_AT_ENV) == f"{point}:{epoch}":
        os._exit(137)


def resolve_resume(resume: Optional[str], run_dir: str) -> Optional[str]:
    """``auto`` -> the run folder's last checkpoint if there is one; a path must exist."""
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(run_dir, LAST)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise CheckpointError(f"--resume: checkpoint not found: {resume}")
    return resume


def check_run_dir(run_dir: str, resume_path: Optional[str]) -> None:
    """A fresh run never writes into a folder that holds another run's checkpoints (nothing is lost)."""
    found = sorted(glob.glob(os.path.join(run_dir, "checkpoint_*.pth"))) if resume_path is None else []
    if found:
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(map(os.path.basename, found))}): "
                          f"continue it with --resume auto, or choose another output_dir or seed")


def decide_start(resume: Optional[str], run_dir: str) -> tuple[Optional[str], Optional[str]]:
    """(checkpoint to resume from, or None; the error that stops the run, or None), decided on rank 0
    and broadcast, so every rank takes the same path and raises the same error."""
    try:
        path = resolve_resume(resume, run_dir)
        check_run_dir(run_dir, path)
        return path, None
    except ICSDError as exc:
        return None, str(exc)


def logged_records(path: str, last_epoch: int) -> list[dict]:
    """The log file's records of epochs <= ``last_epoch`` (a resumed run rewrites what came after)."""
    if not os.path.isfile(path):
        return []
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
                if record["epoch"] <= last_epoch:
                    kept.append(record)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line cut short by a crash
    return kept


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose epoch can start part-way (``skip`` samples of this rank), so a run resumed
    from a recovery checkpoint continues with the next batch of the same shuffled order."""

    skip = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def build_train_loader(pairs, cfg: Config, env: DistEnv) -> tuple[ResumableSampler, Loader]:
    """Shuffled by (seed, epoch) through a DistributedSampler in every case, so the data order is the same
    after a resume; full batches only (the gathered loss needs equal batches on every rank)."""
    sampler = ResumableSampler(pairs, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed,
                               drop_last=True)
    loader = Loader(pairs, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, pin_memory=env.device.type == "cuda",
                        persistent_workers=cfg.data.num_workers > 0, worker_init_fn=ignore_stop_signals)
    return sampler, loader


def check_images(splits: dict[str, Split], cfg: Config, env: DistEnv) -> None:
    """Decode every image of ``splits`` (sharded over the ranks) and stop naming the ones that fail."""
    failures: list[str] = []
    for name, split in splits.items():
        errors = unreadable_images(split.image_paths[env.rank::env.world_size], cfg.data.num_workers)
        failures += [f"{name}: {e}" for e in errors]
    failures = [f for part in all_gather_objects(failures) for f in part]
    if failures:
        listed = "\n  ".join(failures[:20]) + ("" if len(failures) <= 20 else f"\n  ... {len(failures) - 20} more")
        raise DataError(f"{len(failures)} image(s) of the evaluated splits cannot be decoded:\n  {listed}\n"
                        f"(retrieval.py --check-data lists every unreadable image of every split)")


class RunFolder:
    """The run folder, written by rank 0 alone, in an order that a kill at any instant leaves consistent."""

    def __init__(self, path: str, cfg: Config):
        self.path, self.cfg = path, cfg
        self.last, self.best, self.log = (os.path.join(path, name) for name in (LAST, BEST, LOG))

    def epoch_file(self, epoch: int) -> str:
        return os.path.join(self.path, f"checkpoint_epoch{epoch}.pth")

    def remove_temp_files(self) -> None:
        for tmp in glob.glob(os.path.join(self.path, "*" + TMP_SUFFIX)):
            os.remove(tmp)

    def write_log(self, records: list[dict]) -> None:
        """``log.jsonl`` as a whole, from the records the last checkpoint carries (atomic)."""
        tmp = self.log + TMP_SUFFIX
        with open(tmp, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
        os.replace(tmp, self.log)

    def commit_epoch(self, state: dict) -> None:
        """The end of an epoch: its checkpoint, then the links and the log derived from it. A kill between
        any two steps is repaired by ``restore(state)`` on resume."""
        epoch = state["epoch"]
        save_checkpoint(state, self.last, before_rename=lambda: kill_point("last_tmp", epoch))
        kill_point("last_saved", epoch)
        self._links_and_log(state, epoch)

    def restore(self, state: dict, path: str) -> list[dict]:
        """Resuming from ``state`` (read from ``path``): redo what its epoch's bookkeeping may have missed,
        drop later records. Returns the log records of the epochs the checkpoint finished."""
        self.remove_temp_files()
        if state.get("log") is None:  # a checkpoint from before the log travelled with it: the log file's
            records = logged_records(self.log, state["epoch"])
            self.write_log(records)
            return records
        if state.get("position") is None and os.path.abspath(path) == os.path.abspath(self.last):
            self._links_and_log(state, state["epoch"])
        else:
            self.write_log(state["log"])
        return list(state["log"])

    def _links_and_log(self, state: dict, epoch: int) -> None:
        if state["best"]["epoch"] == epoch:
            link_checkpoint(self.last, self.best)
        save_every = self.cfg.train.save_every
        if save_every and epoch % save_every == 0:
            link_checkpoint(self.last, self.epoch_file(epoch))
        kill_point("epoch_linked", epoch)
        self.write_log(state["log"])


def run_training(cfg: Config, env: DistEnv, resume: Optional[str] = None) -> ICSDModel:
    """Train as configured; returns the trained (unwrapped) model. A stop signal ends it with ``Preempted``
    after a recovery checkpoint; an unreadable training image after one as well, with its error."""
    run_dir = cfg.run_dir
    check_trackers(cfg.train.report_to)
    resume_path, error = broadcast_object(decide_start(resume, run_dir) if env.is_main else None)
    if error is not None:
        raise ICSDError(error)
    seed_everything(cfg.seed + env.rank)

    # Data first: bad input stops the run before any model is built or weights are downloaded.
    train_split = load_data_split(cfg.data, cfg.data.train_split)
    train_images = training_split(cfg.data, train_split)  # data.image_root: the prepared cache
    teacher = None
    if needs_teacher_features(cfg.loss):
        ensure_text_cache(cfg.data, train_split, env)  # built once, by rank 0, when missing
        teacher = load_teacher_features(cfg.data, train_split)
    eval_splits = {n: (train_split if n == cfg.data.train_split else load_data_split(cfg.data, n))
                   for n in cfg.eval.splits}
    check_images(eval_splits, cfg, env)  # cheap next to an epoch, which a bad val image would waste

    state = load_checkpoint(resume_path) if resume_path is not None else None
    model, backbone = build_model_for(cfg, env, state["model"] if state else None, resume_path or "")
    pairs = build_train_pairs(cfg, train_images, teacher, backbone.pixels.host, backbone.tokenizer)
    sampler, loader = build_train_loader(pairs, cfg, env)
    device_batches = DeviceBatches(loader, env.device, backbone.pixels)
    batches_per_update = cfg.train.accum_steps
    updates_per_epoch = len(loader) // batches_per_update
    if updates_per_epoch == 0:
        raise ConfigError(f"the train split has {len(pairs)} captions: too few for train.batch_size "
                          f"{cfg.train.batch_size} x {env.world_size} processes x train.accum_steps "
                          f"{cfg.train.accum_steps}")

    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, updates_per_epoch)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.train.precision == "amp_fp16")
    evaluator = Evaluator(eval_splits, backbone.pixels, backbone.tokenizer)

    start_epoch, num_updates, best, records, position = 0, 0, {"score": None, "epoch": None}, [], None
    folder = RunFolder(run_dir, cfg)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:  # a run resumed in amp_fp16 from another precision starts anew
            scaler.load_state_dict(state["scaler"])
        start_epoch, num_updates, best = state["epoch"], state["num_updates"], state["best"]
        records, position = list(state.get("log") or []), state.get("position")
        if len(state["rng"]) == env.world_size:  # one per rank; on another number of processes: seed + rank
            set_rng_state(state["rng"][env.rank], env.device)
        elif position is not None:
            logger.warning(f"warning: {resume_path} stopped mid-epoch on {len(state['rng'])} processes; resumed "
                           f"on {env.world_size}: epoch {position['epoch']} continues after the same number of steps, "
                           f"not with the same batches")
        if state["config"]["train"]["epochs"] != cfg.train.epochs:
            logger.warning(f"warning: train.epochs is {cfg.train.epochs}, the checkpoint's run had "
                           f"{state['config']['train']['epochs']}: the restored schedule keeps its length")
        where = f"epoch {start_epoch}" if position is None else \
            f"epoch {position['epoch']}, step {position['update']}/{updates_per_epoch}"
        logger.info(f"resumed from {resume_path} at {where}")
        if env.is_main:  # the other ranks' records are never written
            os.makedirs(run_dir, exist_ok=True)
            records = folder.restore(state, resume_path)
        del state

    ddp_model = model
    if env.distributed:
        with warnings.catch_warnings():
            # Our buffers (frozen temperatures, attention masks) are equal on every rank and never change,
            # so they are not re-broadcast every forward; torch now warns about the argument's name.
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            ddp_model = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda"
                                                else None, broadcast_buffers=False)

    trackers = []
    if env.is_main:
        os.makedirs(run_dir, exist_ok=True)
        log_to_file(os.path.join(run_dir, OUT_LOG))  # from here on, what rank 0 shows is also in out.log
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
        if resume_path is None:
            folder.remove_temp_files()
            folder.write_log([])  # a fresh run drops a crashed run's log (check_run_dir saw no checkpoint)
        trackers = build_trackers(cfg, run_dir)
    select_key = f"{cfg.eval.select_on}_{cfg.eval.select_metric}"

    def make_state(epoch: int, position: Optional[dict]) -> dict:
        """The checkpoint (collective: every rank's RNG states are gathered)."""
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                "num_updates": num_updates, "best": best, "rng": all_gather_objects(rng_state(env.device)),
                "config": config_to_dict(cfg), "log": records, "position": position}

    def save_recovery(epoch_state: EpochState) -> None:
        """A mid-epoch checkpoint (``checkpoint_last.pth`` with the position in the epoch)."""
        nonlocal num_updates
        num_updates = epoch_state.num_updates
        position = {**epoch_state.as_dict(), "sums": all_gather_objects(epoch_state.sums)}  # one list per rank
        recovery = make_state(epoch_state.epoch - 1, position)
        if env.is_main:
            save_checkpoint(recovery, folder.last)

    def log_step(scalars: dict, step: int) -> None:
        temps = {f"train/{n}": t().item() for n, t in model.temperatures.items()}
        for tracker in trackers:
            tracker.log({**{f"train/{k}": v for k, v in scalars.items()}, **temps}, step)

    try:
        with StopControl() as control:
            if start_epoch == 0 and position is None and cfg.eval.eval_before_training and eval_splits:
                results = evaluator.evaluate(model, cfg, env)
                logger.info(f"epoch 0 (before training)\n{format_table(results)}")
                records.append({"epoch": 0, **flat_metrics(results)})
                if env.is_main:
                    folder.write_log(records)

            for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
                epoch_state = EpochState(**{**position, "sums": _rank_sums(position["sums"], env)}) \
                    if position is not None else EpochState(epoch, num_updates, optimizer.param_groups[0]["lr"])
                position = None
                epoch_start = time.perf_counter()
                sampler.set_epoch(epoch)
                # A resumed recovery checkpoint: skip the samples of this rank already trained on.
                sampler.skip = epoch_state.update * batches_per_update * cfg.train.batch_size
                result = train_one_epoch(ddp_model, device_batches, optimizer, scheduler, scaler, cfg, env, epoch_state,
                                         updates_per_epoch, control, save_recovery, log_step if trackers else None)
                if isinstance(result, EpochStop):
                    _stop(result, save_recovery, folder, updates_per_epoch)
                stats = result
                num_updates = stats.pop("num_updates")
                scheduler.step(epoch)
                results = evaluator.evaluate(model, cfg, env)
                metrics = flat_metrics(results)
                score = metrics.get(select_key)
                is_best = score is not None and (best["score"] is None or score > best["score"])
                if is_best:
                    best = {"score": score, "epoch": epoch}
                temps = {name: temp().item() for name, temp in model.temperatures.items()}
                records.append({"epoch": epoch, "lr": epoch_state.lr, **stats, **temps,
                                "epoch_seconds": time.perf_counter() - epoch_start + epoch_state.seconds, **metrics,
                                "best_epoch": best["epoch"], f"best_{select_key}": best["score"]})
                state = make_state(epoch, None)
                if env.is_main:
                    folder.commit_epoch(state)
                del state
                logger.info(f"epoch {epoch}/{cfg.train.epochs}  loss {stats['loss']:.4f} (contrastive "
                            f"{stats['loss_contrastive']:.4f}, soft {stats['loss_soft']:.4f})  "
                            f"{stats['samples_per_second']:.1f} samples/s"
                            + (f"\n{format_table(results)}" if results else ""))
                for tracker in trackers:
                    tracker.log({**{f"{split}/{k}": v for split, m in results.items() for k, v in m.items()},
                                 **{f"epoch/{k}": v for k, v in records[-1].items()
                                    if k != "epoch" and isinstance(v, (int, float))}}, epoch)
                signum, _ = control.should_stop()  # a signal during evaluation or bookkeeping: the epoch is saved
                if signum:
                    raise Preempted(signum, f"stopped by {signal_name(signum)} after epoch {epoch}: "
                                            f"{folder.last} holds it; continue with --resume auto")
    finally:
        for tracker in trackers:
            tracker.close()
    if best["epoch"] is not None:
        logger.info(f"done: {run_dir} (best {select_key} {best['score']:.2f} at epoch {best['epoch']})")
    else:
        logger.info(f"done: {run_dir}")
    return model


def _rank_sums(per_rank: list[list[float]], env: DistEnv) -> list[float]:
    """This rank's loss sums from a recovery checkpoint; on another number of processes rank 0 takes them
    all (the epoch's means are reduced over ranks, so the total is what matters)."""
    if len(per_rank) == env.world_size:
        return per_rank[env.rank]
    if env.rank == 0 and per_rank and per_rank[0]:
        return [sum(values) for values in zip(*per_rank)]
    return [0.0] * len(per_rank[0]) if per_rank and per_rank[0] else []


def _stop(stop: EpochStop, save_recovery, folder: RunFolder, updates_per_epoch: int) -> None:
    """Every rank stopped at the same step boundary: write the recovery checkpoint, then end the run."""
    save_recovery(stop.state)
    where = f"in epoch {stop.state.epoch} at step {stop.state.update}/{updates_per_epoch}"
    if stop.signum:
        raise Preempted(stop.signum, f"stopped by {signal_name(stop.signum)} {where}: recovery checkpoint "
                                     f"{folder.last}; continue with --resume auto")
    logger.info(f"stopped {where} on an unreadable training image: recovery checkpoint {folder.last} keeps the "
                f"finished steps; fix or remove the image, then continue with --resume auto")
    if stop.error is not None:
        raise stop.error
    raise OtherRankFailed("another process met an unreadable image")
