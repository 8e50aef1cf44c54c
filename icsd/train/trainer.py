"""The training run, top to bottom: the run folder, the data (checked before anything is built), the model
and its optimizer, then epoch after epoch of ``icsd.train.loop.train_one_epoch`` with evaluation and
checkpoints (``icsd.train.session``). A stop signal ends it with ``Preempted`` after a recovery checkpoint;
an unreadable training image after one as well, with its error."""
from __future__ import annotations

import itertools
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from icsd.checkpoint import load_checkpoint
from icsd.config import Config
from icsd.data.annotations import Split
from icsd.data.build import (
    TeacherFeatures,
    build_train_pairs,
    load_data_split,
    load_eval_splits,
    load_teacher_features,
    training_split,
)
from icsd.data.caches import input_caches
from icsd.data.check import unreadable_images
from icsd.data.loaders import Loader
from icsd.data.pixels import DeviceBatches
from icsd.data.text_cache import ensure_text_cache
from icsd.distributed import DistEnv, all_gather_objects, run_on_main
from icsd.errors import ConfigError, DataError
from icsd.evaluate import Evaluator
from icsd.losses import Criterion, needs_teacher_features
from icsd.models import ICSDModel, build_model_for
from icsd.processes import ignore_stop_signals
from icsd.train.loop import EpochStop, train_one_epoch
from icsd.train.optim import build_optimizer, build_scheduler
from icsd.train.preemption import StopControl
from icsd.train.run_folder import RunFolder
from icsd.train.session import Session
from icsd.train.state import TrainState, seed_everything
from icsd.train.tracking import Trackers, check_trackers

logger = logging.getLogger(__name__)


def run_training(cfg: Config, env: DistEnv, resume: Optional[str] = None, force_unlock: bool = False) -> ICSDModel:
    """Train as configured; returns the trained (unwrapped) model."""
    check_trackers(cfg.train.report_to)
    folder = RunFolder(cfg)
    try:
        # The main rank takes the folder's lease and decides where to start; every rank follows it.
        resume_path = run_on_main(env, lambda: folder.open(resume, force_unlock), "opening the run folder")
        seed_everything(cfg.seed + env.rank)
        data = load_training_data(cfg, env)  # bad input stops the run before a model is built
        session = build_session(cfg, env, data, folder, resume_path)
        with session.trackers, StopControl() as session.control:
            try:
                session.evaluate_before_training()
                for epoch in range(session.state.epoch + 1, cfg.train.epochs + 1):
                    position, started = session.epoch_position(epoch), time.perf_counter()
                    result = train_one_epoch(session, position)
                    if isinstance(result, EpochStop):
                        session.stop(result)  # writes the recovery checkpoint, then raises
                    session.end_epoch(position, result, started)
            finally:
                session.batches.loader.close()  # the workers end with the run, not at interpreter exit
        session.report_done()
        return session.state.model
    finally:
        if env.is_main:
            folder.close()


@dataclass
class TrainingData:
    train: Split  # the training split, images from the prepared cache when data.image_root is set
    teacher: Optional[TeacherFeatures]  # the external teachers' features of the training split
    eval_splits: dict[str, Split]


def load_training_data(cfg: Config, env: DistEnv) -> TrainingData:
    """The training split with its teachers' features (a missing text cache is built first, by the main
    rank) and the evaluated splits, whose images are all decoded now: a bad val image would waste an epoch."""
    train = load_data_split(cfg.data, cfg.data.train_split)
    teacher = None
    if needs_teacher_features(cfg.loss):
        ensure_text_cache(cfg.data, train, env)
        teacher = load_teacher_features(cfg.data, train)
    eval_splits = load_eval_splits(cfg, cfg.eval.splits, {cfg.data.train_split: train})
    if cfg.data.pixel_cache is None:  # else building the cache decodes them (a complete one, unchanged, did)
        check_images(eval_splits, cfg, env)
    else:
        check_images({n: s for n, s in eval_splits.items() if n not in cfg.eval.splits}, cfg, env)
    return TrainingData(training_split(cfg.data, train), teacher, eval_splits)


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


def build_session(cfg: Config, env: DistEnv, data: TrainingData, folder: RunFolder,
                  resume_path: Optional[str]) -> Session:
    """The model (with the checkpoint's weights when resuming), its optimizer, schedule and scaler, the
    loader, the restored training state, and the run folder started."""
    checkpoint = load_checkpoint(resume_path, "--resume") if resume_path is not None else None
    model, backbone = build_model_for(cfg, env, checkpoint["model"] if checkpoint else None, resume_path or "")
    # the pixel and token caches of the trained and evaluated splits (not the extra datasets'): built if missing
    cached = {n: s for n, s in data.eval_splits.items() if n in cfg.eval.splits}
    inputs = input_caches(cfg.data, {**cached, cfg.data.train_split: data.train}, backbone, env)
    pairs = build_train_pairs(cfg, data.train, data.teacher, backbone.pixels.host, backbone.tokenizer,
                              inputs.get(cfg.data.train_split))
    sampler, loader = build_train_loader(pairs, cfg, env)
    updates_per_epoch = len(loader) // cfg.train.accum_steps
    if updates_per_epoch == 0:
        raise ConfigError(f"the train split has {len(pairs)} captions: too few for train.batch_size "
                          f"{cfg.train.batch_size} x {env.world_size} processes x train.accum_steps "
                          f"{cfg.train.accum_steps}")
    optimizer = build_optimizer(model, cfg.train)
    state = TrainState(model, optimizer, build_scheduler(optimizer, cfg.train, updates_per_epoch),
                       torch.amp.GradScaler(env.device.type, enabled=cfg.train.precision == "amp_fp16"))
    if checkpoint is not None:
        state.restore(checkpoint, cfg, env)
        position = state.position
        where = f"epoch {state.epoch}" if position is None else \
            f"epoch {position['epoch']}, step {position['update']}/{updates_per_epoch}"
        logger.info(f"resumed from {resume_path} at {where}")
        if env.is_main:  # the other ranks' records are never written
            state.records = folder.restore(checkpoint, resume_path)
        del checkpoint
    if env.is_main:
        folder.start(resumed=resume_path is not None)
    criterion = Criterion(cfg.loss)
    return Session(cfg, env, state, _distributed(model, env), lambda out, batch: criterion(out, batch, model),
                   DeviceBatches(loader, env.device, backbone.pixels), sampler, updates_per_epoch, folder,
                   Evaluator(data.eval_splits, backbone.pixels, backbone.tokenizer, inputs),
                   Trackers(cfg, cfg.run_dir, enabled=env.is_main))


def _distributed(model: ICSDModel, env: DistEnv):
    if not env.distributed:
        return model
    with warnings.catch_warnings():
        # Our buffers (frozen temperatures, attention masks) are equal on every rank and never change, so they
        # are not re-broadcast every forward; torch now warns about the argument's name.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                       broadcast_buffers=False)
