"""Benchmark: one training step on synthetic inputs, ICSD vs contrastive-only, measured side by side.

    .venv/bin/python bench/train_step.py                                   # tiny model, batch 32, fp32, CPU
    .venv/bin/python bench/train_step.py --compile --fused-adamw           # + torch.compile / fused AdamW rows
    python bench/train_step.py --model ViT-B-32-quickgelu --batch-size 128 --precision amp_bf16 --device cuda
    python bench/train_step.py --model ViT-L-14-336-quickgelu --batch-size 16 --precision amp_bf16 --grad-checkpointing

Variants are built from --config (default configs/vitb32/coco/icsd.yaml) with model.pretrained=null and
--model/--batch-size/--precision/--opts applied: "icsd" is the config as given (PDM + soft labels);
"contrastive" is configs/vitb32/coco/contrastive.yaml's change of it (model.pdm.enabled=false,
loss.soft_label.weight=0). The step is the training step of icsd/train/loop.py built from its public pieces:
autocast forward, icsd.losses.Criterion, GradScaler-scaled backward, optional grad clipping,
optimizer step (timm AdamW, as training), zero_grad, temperature clamping. Inputs are random: images at the
model's input size, tokens of the context length, teacher features (--ext-img-dim, --ext-txt-dim, float16),
an image index with pairs of captions per image. Variants are interleaved step by step, so a change of load
on a shared machine hits all alike. One table, one row per variant:

  variant         icsd | contrastive, with "+compile" (torch.compile of the model, --compile) or
                  "+fused" (AdamW(fused=True), --fused-adamw) rows when asked
  samples_s       batch size / median step time
  step_ms         median step time after --warmup steps (the device synchronised around each step)
  p90_ms          90th percentile of the step times
  peak_mem_mb     CUDA: torch.cuda.max_memory_allocated over the variant's steps. CPU: the process's peak RSS
                  (ru_maxrss) at the end, the same for every row since all variants live in one process
  vs_contrastive  step_ms / the contrastive step_ms with the same flags (acceptance with the tiny model:
                  icsd <= 1.10)
  vs_plain        step_ms / the same loss without +compile/+fused (< 1: the flag helps)
  loss_rel_diff   the largest |loss - plain loss| / |plain loss| over every step (warm-up included) of the
                  variant against the same loss without the flag, both from the same init and batch (the
                  acceptance for making a speed flag a default: <= 0.01)
  syncs_step      CUDA: host syncs per timed step (torch.cuda.set_sync_debug_mode("warn") around the step:
                  .item(), nonzero, blocking copies to the host; target 0). CPU: nan
  recompiles      +compile rows: graphs compiled during the timed steps (after warm-up, all +compile
                  rows together; target 0)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import time
import warnings

import torch

from icsd.amp import autocast
from icsd.config import Config, load_config
from icsd.distributed import select_device
from icsd.losses import Criterion
from icsd.models import build_model
from icsd.train.loop import optimizer_step
from icsd.train.optim import build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRASTIVE = ["model.pdm.enabled=false", "loss.soft_label.weight=0.0"]  # configs/vitb32/coco/contrastive.yaml


@dataclasses.dataclass
class Variant:
    name: str
    cfg: Config
    model: torch.nn.Module
    step_model: torch.nn.Module  # the model, or its torch.compile wrapper
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    times: list
    losses: list = dataclasses.field(default_factory=list)
    peak: int = 0
    syncs: int = 0


def synthetic_batch(cfg: Config, model, device: torch.device, batch_size: int, ext_img: int, ext_txt: int,
                    seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    context = model.clip.context_length
    vocab = model.clip.vocab_size
    batch = {"image": torch.randn(batch_size, 3, size, size, generator=gen),
             "tokens": torch.randint(1, vocab - 1, (batch_size, context), generator=gen),
             "image_index": torch.arange(batch_size) // 2,  # two captions per image, as COCO batches often hold
             "ext_img": torch.randn(batch_size, ext_img, generator=gen).half(),
             "ext_txt": torch.randn(batch_size, ext_txt, generator=gen).half()}
    batch["tokens"][:, -1] = vocab - 1  # an end-of-text token (the pooled position)
    return {k: v.to(device) for k, v in batch.items()}


def train_step(v: Variant, batch: dict, device: torch.device) -> torch.Tensor:
    """icsd/train/loop.py's step (accum_steps 1) without the logging bookkeeping; returns the loss (on device)."""
    t = v.cfg.train
    with autocast(t.precision, device):
        out = v.step_model(batch["image"], batch["tokens"])
    terms = v.criterion(out, batch, v.model)
    v.scaler.scale(terms["loss"]).backward()
    optimizer_step(v.model, v.optimizer, v.scaler, t.grad_clip)
    return terms["loss"].detach()


def build_variant(name: str, cfg: Config, device: torch.device, compile_model: bool, fused: bool) -> Variant:
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    model = model.to(device).train()
    optimizer = build_optimizer(model, cfg.train)
    if fused:
        o = cfg.train.optimizer
        # the same parameter groups (no decay on biases/norms/temperatures), fused kernel
        optimizer = torch.optim.AdamW(optimizer.param_groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "amp_fp16")
    step_model = torch.compile(model) if compile_model else model
    return Variant(name, cfg, model, step_model, Criterion(cfg.loss), optimizer, scaler, [])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counted_step(v: Variant, batch: dict, device: torch.device) -> tuple[torch.Tensor, int]:
    """``train_step`` and the host syncs it made (CUDA's sync debug mode warns at each one)."""
    if device.type != "cuda":
        return train_step(v, batch, device), 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loss = train_step(v, batch, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return loss, sum("synchroniz" in str(w.message) for w in caught)


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "vitb32", "coco", "icsd.yaml"))
    parser.add_argument("--model", default=os.path.join(REPO, "configs", "models", "icsd-tiny.json"),
                        help="model.clip (default: the tiny test model); random init always")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default=None, help="fp32 | amp_bf16 | amp_fp16 (default: fp32 on CPU, "
                                                          "the config's on CUDA)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    parser.add_argument("--fused-adamw", action="store_true", help="also measure AdamW(fused=True)")
    parser.add_argument("--losses", nargs="+", default=["icsd", "contrastive"], choices=("icsd", "contrastive"),
                        help="which losses to time (vs_contrastive needs both)")
    parser.add_argument("--ext-img-dim", type=int, default=768, help="image-teacher feature size (Unicom: 768)")
    parser.add_argument("--ext-txt-dim", type=int, default=768, help="text-teacher feature size (mpnet: 768)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--opts", nargs="*", default=[], help="more config overrides, key=value")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    precision = args.precision or ("fp32" if device.type == "cpu" else None)
    opts = [f"model.clip={args.model}", "model.pretrained=null", f"train.batch_size={args.batch_size}",
            f"train.grad_checkpointing={str(args.grad_checkpointing).lower()}", f"train.device={device.type}",
            *([f"train.precision={precision}"] if precision else []), *args.opts]
    configs = {"icsd": load_config(args.config, opts), "contrastive": load_config(args.config, opts + CONTRASTIVE)}
    configs = {name: cfg for name, cfg in configs.items() if name in args.losses}
    flags = [("", False, False)] + ([("+compile", True, False)] if args.compile else []) \
        + ([("+fused", False, True)] if args.fused_adamw else [])
    variants = [build_variant(name + suffix, cfg, device, c, f) for suffix, c, f in flags
                for name, cfg in configs.items()]
    batch = synthetic_batch(variants[0].cfg, variants[0].model, device, args.batch_size, args.ext_img_dim,
                            args.ext_txt_dim)
    graphs_after_warmup = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            graphs_after_warmup = graphs_compiled()
        for v in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            loss, syncs = counted_step(v, batch, device)
            sync(device)
            elapsed = time.perf_counter() - start
            v.losses.append(loss.float().item())  # read after the timer stopped
            if step >= args.warmup:
                v.times.append(elapsed)
                v.syncs += syncs
                if device.type == "cuda":
                    v.peak = max(v.peak, torch.cuda.max_memory_allocated(device))
    recompiles = graphs_compiled() - graphs_after_warmup if args.compile else float("nan")
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    median = {v.name: statistics.median(v.times) for v in variants}
    by_name = {v.name: v for v in variants}
    first = next(iter(configs.values()))
    print(f"# {args.model} batch {args.batch_size} {first.train.precision} on {device}"
          f"{' (grad checkpointing)' if args.grad_checkpointing else ''}, {args.steps} steps after {args.warmup}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':<22} {'samples_s':>10} {'step_ms':>9} {'p90_ms':>9} {'peak_mem_mb':>12} "
          f"{'vs_contrastive':>15} {'vs_plain':>9} {'loss_rel_diff':>14} {'syncs_step':>11} {'recompiles':>11}")
    for v in variants:
        loss, _, suffix = v.name.partition("+")
        suffix = "+" + suffix if suffix else ""
        p90 = statistics.quantiles(v.times, n=10)[-1] if len(v.times) > 1 else v.times[0]
        peak = v.peak if device.type == "cuda" else rss_peak
        plain = by_name[loss].losses
        rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(v.losses, plain))
        vs_contrastive = median[v.name] / median["contrastive" + suffix] if "contrastive" in configs else float("nan")
        print(f"{v.name:<22} {args.batch_size / median[v.name]:>10.1f} {1000 * median[v.name]:>9.1f} "
              f"{1000 * p90:>9.1f} {peak / 2 ** 20:>12.0f} {vs_contrastive:>15.3f} "
              f"{median[v.name] / median[loss]:>9.3f} {rel:>14.2e} "
              f"{v.syncs / len(v.times) if device.type == 'cuda' else float('nan'):>11.2f} "
              f"{recompiles if suffix == '+compile' else float('nan'):>11}")


if __name__ == "__main__":
    main()
