"""The training run: build everything from a config, train epoch by epoch, evaluate, checkpoint, log."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from icsd.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from icsd.config import Config, config_to_dict, save_config
from icsd.data.annotations import Split
from icsd.data.build import build_train_pairs, load_data_split, load_teacher_features, needs_teacher_features
from icsd.distributed import DistEnv, all_gather_objects
from icsd.engine import evaluate_split, train_one_epoch, unwrap
from icsd.errors import CheckpointError, ConfigError
from icsd.models import ICSDModel, build_model
from icsd.optim import build_optimizer, build_scheduler

LAST, BEST = "checkpoint_last.pth", "checkpoint_best.pth"
METRIC_ORDER = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "rsum")


def log0(env: DistEnv, *args) -> None:
    if env.is_main:
        print(*args, flush=True)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A readable Recall@K table, one row per split (and per COCO 1K five-fold result)."""
    rows = []
    for split, metrics in results.items():
        rows.append((split, metrics))
        if "1k_rsum" in metrics:
            rows.append((f"{split} (1K)", {k[3:]: v for k, v in metrics.items() if k.startswith("1k_")}))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'split':<{width}} " + " ".join(f"{k:>8}" for k in METRIC_ORDER)]
    for name, metrics in rows:
        lines.append(f"{name:<{width}} " + " ".join(f"{metrics[k]:8.2f}" for k in METRIC_ORDER))
    return "\n".join(lines)


@dataclass
class EvalSplits:
    """The evaluated splits with what encoding them needs."""

    splits: dict[str, Split]
    transform: Callable
    tokenizer: Callable

    def evaluate(self, model, cfg: Config, env: DistEnv) -> dict[str, dict[str, float]]:
        return {name: evaluate_split(model, split, self.transform, self.tokenizer, cfg, env)
                for name, split in self.splits.items()}


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{split}_{k}": v for split, metrics in results.items() for k, v in metrics.items()}


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


def load_eval_splits(cfg: Config, names) -> dict[str, Split]:
    return {name: load_data_split(cfg.data, name) for name in names}


def build_model_for(cfg: Config, env: DistEnv, from_checkpoint: bool):
    """The model on its device. Weights that a checkpoint will overwrite are not downloaded."""
    if from_checkpoint:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None))
    model, backbone = build_model(cfg)
    return model.to(env.device), backbone


def build_train_loader(pairs, cfg: Config, env: DistEnv) -> tuple[DistributedSampler, DataLoader]:
    """Shuffled by (seed, epoch) through a DistributedSampler in every case, so the data order is the same
    after a resume; full batches only (the gathered loss needs equal batches on every rank)."""
    sampler = DistributedSampler(pairs, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(pairs, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, pin_memory=env.device.type == "cuda",
                        persistent_workers=cfg.data.num_workers > 0)
    return sampler, loader


@dataclass
class TrainingResult:
    model: ICSDModel  # the trained model (unwrapped), on its device
    record: dict  # the last epoch's log record


def run_training(cfg: Config, env: DistEnv, resume: Optional[str] = None) -> TrainingResult:
    """Train as configured."""
    run_dir = cfg.run_dir
    resume_path = resolve_resume(resume, run_dir)
    seed_everything(cfg.seed + env.rank)

    # Data first: bad input stops the run before any model is built or weights are downloaded.
    train_split = load_data_split(cfg.data, cfg.data.train_split)
    teacher = load_teacher_features(cfg.data, train_split, env) if needs_teacher_features(cfg) else None
    eval_splits = {n: (train_split if n == cfg.data.train_split else load_data_split(cfg.data, n))
                   for n in cfg.eval.splits}

    model, backbone = build_model_for(cfg, env, from_checkpoint=resume_path is not None)
    pairs = build_train_pairs(cfg, train_split, teacher, backbone.transform, backbone.tokenizer)
    sampler, loader = build_train_loader(pairs, cfg, env)
    updates_per_epoch = len(loader) // cfg.train.accum_steps
    if updates_per_epoch == 0:
        raise ConfigError(f"the train split has {len(pairs)} captions: too few for train.batch_size "
                          f"{cfg.train.batch_size} x {env.world_size} processes x train.accum_steps "
                          f"{cfg.train.accum_steps}")

    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, updates_per_epoch)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.train.precision == "amp_fp16")
    evaluator = EvalSplits(eval_splits, backbone.transform, backbone.tokenizer)

    start_epoch, num_updates, best = 0, 0, {"score": float("-inf"), "epoch": None}
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        for part, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            obj.load_state_dict(state[part])
        start_epoch, num_updates, best = state["epoch"], state["num_updates"], state["best"]
        rngs = state["rng"]  # one per rank; a run resumed on another number of processes takes rank 0's
        set_rng_state(rngs[env.rank] if len(rngs) == env.world_size else rngs[0])
        log0(env, f"resumed from {resume_path} at epoch {start_epoch}")

    ddp_model = model
    if env.distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda"
                                            else None)

    if env.is_main:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
    log_path = os.path.join(run_dir, "log.jsonl")
    select_key = f"{cfg.eval.select_on}_{cfg.eval.select_metric}"

    def write_log(record: dict) -> None:
        if env.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    if start_epoch == 0 and cfg.eval.eval_before_training and eval_splits:
        results = evaluator.evaluate(model, cfg, env)
        log0(env, f"epoch 0 (before training)\n{format_table(results)}")
        write_log({"epoch": 0, **flat_metrics(results)})

    record: dict = {}
    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        epoch_start = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        stats, num_updates = train_one_epoch(ddp_model, loader, optimizer, scheduler, scaler, cfg, env, epoch,
                                             num_updates, updates_per_epoch)
        scheduler.step(epoch)
        results = evaluator.evaluate(model, cfg, env) if eval_splits else {}
        temps = {name: temp().item() for name, temp in unwrap(model).temperatures.items()}
        metrics = flat_metrics(results)
        score = metrics.get(select_key)
        is_best = score is not None and score > best["score"]
        if is_best:
            best = {"score": score, "epoch": epoch}
        state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                 "num_updates": num_updates, "best": best, "rng": all_gather_objects(rng_state()),
                 "config": config_to_dict(cfg)}
        if env.is_main:
            save_checkpoint(state, os.path.join(run_dir, LAST))
            if is_best:
                save_checkpoint(state, os.path.join(run_dir, BEST))
            if cfg.train.save_every and epoch % cfg.train.save_every == 0:
                save_checkpoint(state, os.path.join(run_dir, f"checkpoint_epoch{epoch}.pth"))
        record = {"epoch": epoch, "lr": lr, **stats, **temps,
                  "epoch_seconds": time.perf_counter() - epoch_start, **metrics,
                  "best_epoch": best["epoch"], f"best_{select_key}": best["score"]}
        write_log(record)
        log0(env, f"epoch {epoch}/{cfg.train.epochs}  loss {stats['loss']:.4f} (contrastive "
                  f"{stats['loss_contrastive']:.4f}, soft {stats['loss_soft']:.4f})  "
                  f"{stats['samples_per_second']:.1f} samples/s" + (f"\n{format_table(results)}" if results else ""))
    log0(env, f"done: {run_dir} (best {select_key} {best['score']:.2f} at epoch {best['epoch']})"
         if best["epoch"] is not None else f"done: {run_dir}")
    return TrainingResult(model, record)


def run_evaluation(cfg: Config, env: DistEnv, weights: Optional[dict], splits) -> dict[str, dict[str, float]]:
    """Evaluate the model with ``weights`` (a checkpoint's ``model`` state; None: the configured
    pretrained weights) on ``splits``, print the table and return the metrics by split."""
    eval_splits = load_eval_splits(cfg, splits)
    model, backbone = build_model_for(cfg, env, from_checkpoint=weights is not None)
    if weights is not None:
        model.load_state_dict(weights)
    results = EvalSplits(eval_splits, backbone.transform, backbone.tokenizer).evaluate(model, cfg, env)
    log0(env, format_table(results))
    return results
