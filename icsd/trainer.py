"""The training run: build everything from a config, train epoch by epoch, evaluate, checkpoint, log."""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from icsd.checkpoint import copy_checkpoint, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from icsd.config import Config, config_to_dict, save_config
from icsd.data.build import (build_train_pairs, load_data_split, load_teacher_features, needs_teacher_features,
                             training_split)
from icsd.distributed import DistEnv, all_gather_objects, broadcast_object
from icsd.engine import train_one_epoch
from icsd.errors import CheckpointError, ConfigError, ICSDError
from icsd.evaluate import Evaluator, build_model_for, flat_metrics, format_table, log0
from icsd.models import ICSDModel
from icsd.optim import build_optimizer, build_scheduler

LAST, BEST, LOG = "checkpoint_last.pth", "checkpoint_best.pth", "log.jsonl"


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


def truncate_log(path: str, last_epoch: int) -> None:
    """Keep the log records of epochs <= ``last_epoch`` (a resumed run rewrites what came after)."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["epoch"] <= last_epoch:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line cut short by a crash
    with open(f"{path}.tmp", "w") as f:
        f.writelines(kept)
    os.replace(f"{path}.tmp", path)


def build_train_loader(pairs, cfg: Config, env: DistEnv) -> tuple[DistributedSampler, DataLoader]:
    """Shuffled by (seed, epoch) through a DistributedSampler in every case, so the data order is the same
    after a resume; full batches only (the gathered loss needs equal batches on every rank)."""
    sampler = DistributedSampler(pairs, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(pairs, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, pin_memory=env.device.type == "cuda",
                        persistent_workers=cfg.data.num_workers > 0)
    return sampler, loader


def run_training(cfg: Config, env: DistEnv, resume: Optional[str] = None) -> ICSDModel:
    """Train as configured; returns the trained (unwrapped) model."""
    run_dir = cfg.run_dir
    resume_path, error = broadcast_object(decide_start(resume, run_dir) if env.is_main else None)
    if error is not None:
        raise ICSDError(error)
    seed_everything(cfg.seed + env.rank)

    # Data first: bad input stops the run before any model is built or weights are downloaded.
    train_split = load_data_split(cfg.data, cfg.data.train_split)
    train_images = training_split(cfg.data, train_split)  # data.image_root: the prepared cache
    teacher = load_teacher_features(cfg.data, train_split, env) if needs_teacher_features(cfg) else None
    eval_splits = {n: (train_split if n == cfg.data.train_split else load_data_split(cfg.data, n))
                   for n in cfg.eval.splits}

    state = load_checkpoint(resume_path) if resume_path is not None else None
    model, backbone = build_model_for(cfg, env, state["model"] if state else None, resume_path or "")
    pairs = build_train_pairs(cfg, train_images, teacher, backbone.transform, backbone.tokenizer)
    sampler, loader = build_train_loader(pairs, cfg, env)
    updates_per_epoch = len(loader) // cfg.train.accum_steps
    if updates_per_epoch == 0:
        raise ConfigError(f"the train split has {len(pairs)} captions: too few for train.batch_size "
                          f"{cfg.train.batch_size} x {env.world_size} processes x train.accum_steps "
                          f"{cfg.train.accum_steps}")

    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, updates_per_epoch)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.train.precision == "amp_fp16")
    evaluator = Evaluator(eval_splits, backbone.transform, backbone.tokenizer)

    start_epoch, num_updates, best = 0, 0, {"score": None, "epoch": None}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:  # a run resumed in amp_fp16 from another precision starts anew
            scaler.load_state_dict(state["scaler"])
        start_epoch, num_updates, best = state["epoch"], state["num_updates"], state["best"]
        if len(state["rng"]) == env.world_size:  # one per rank; on another number of processes: seed + rank
            set_rng_state(state["rng"][env.rank], env.device)
        if state["config"]["train"]["epochs"] != cfg.train.epochs:
            log0(env, f"warning: train.epochs is {cfg.train.epochs}, the checkpoint's run had "
                      f"{state['config']['train']['epochs']}: the restored schedule keeps its length")
        log0(env, f"resumed from {resume_path} at epoch {start_epoch}")
        del state

    ddp_model = model
    if env.distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda"
                                            else None, broadcast_buffers=False)

    log_path = os.path.join(run_dir, LOG)
    if env.is_main:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
        truncate_log(log_path, start_epoch if resume_path else -1)  # a fresh run drops a crashed run's log
    select_key = f"{cfg.eval.select_on}_{cfg.eval.select_metric}"

    def write_log(record: dict) -> None:
        if env.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    if start_epoch == 0 and cfg.eval.eval_before_training and eval_splits:
        results = evaluator.evaluate(model, cfg, env)
        log0(env, f"epoch 0 (before training)\n{format_table(results)}")
        write_log({"epoch": 0, **flat_metrics(results)})

    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        epoch_start = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        stats, num_updates = train_one_epoch(ddp_model, loader, optimizer, scheduler, scaler, cfg, env, epoch,
                                             num_updates, updates_per_epoch)
        scheduler.step(epoch)
        results = evaluator.evaluate(model, cfg, env)
        metrics = flat_metrics(results)
        score = metrics.get(select_key)
        is_best = score is not None and (best["score"] is None or score > best["score"])
        if is_best:
            best = {"score": score, "epoch": epoch}
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                 "num_updates": num_updates, "best": best, "rng": all_gather_objects(rng_state(env.device)),
                 "config": config_to_dict(cfg)}
        if env.is_main:
            save_checkpoint(state, os.path.join(run_dir, LAST))
            if is_best:
                copy_checkpoint(os.path.join(run_dir, LAST), os.path.join(run_dir, BEST))
            if cfg.train.save_every and epoch % cfg.train.save_every == 0:
                copy_checkpoint(os.path.join(run_dir, LAST), os.path.join(run_dir, f"checkpoint_epoch{epoch}.pth"))
        temps = {name: temp().item() for name, temp in model.temperatures.items()}
        write_log({"epoch": epoch, "lr": lr, **stats, **temps, "epoch_seconds": time.perf_counter() - epoch_start,
                   **metrics, "best_epoch": best["epoch"], f"best_{select_key}": best["score"]})
        log0(env, f"epoch {epoch}/{cfg.train.epochs}  loss {stats['loss']:.4f} (contrastive "
                  f"{stats['loss_contrastive']:.4f}, soft {stats['loss_soft']:.4f})  "
                  f"{stats['samples_per_second']:.1f} samples/s" + (f"\n{format_table(results)}" if results else ""))
    if best["epoch"] is not None:
        log0(env, f"done: {run_dir} (best {select_key} {best['score']:.2f} at epoch {best['epoch']})")
    else:
        log0(env, f"done: {run_dir}")
    return model
