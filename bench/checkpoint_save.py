"""Benchmark: the cost of a durable checkpoint save, before and after the one atomic writer.

    .venv/bin/python bench/checkpoint_save.py                      # the example's state and a ViT-B/32-sized one
    .venv/bin/python bench/checkpoint_save.py --states example --repeats 5 --dir /scratch/ckpt

Two ways to write the same checkpoint, alternated, each ``--repeats`` times (medians reported):

  rename   the writer before: ``torch.save(state, path.tmp)`` then ``os.replace`` (atomic against a crash of the
           process, not durable: the data and the rename may still be in the page cache when the node fails)
  durable  ``icsd.files.write_atomic``: ``torch.save`` into the open temp file, ``fsync`` it, rename, ``fsync`` the
           folder (what a checkpoint goes through now)

States (a training checkpoint's content: model weights plus AdamW's two moments per trainable parameter):

  example  the example config's tiny model (random init)
  vitb32   the ViT-B/32 ICSD model (random init; 151M parameters, about 1.8 GB with the optimizer state)

Columns: state, MB, median seconds of each way, their ratio (durable / rename), and MB/s of the durable save.
The disk under --dir and what else the machine is doing set the numbers: compare the columns of one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from icsd.config import load_config
from icsd.files import write_atomic
from icsd.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATES = {"example": (os.path.join(REPO, "configs", "example", "icsd.yaml"), []),
          "vitb32": (os.path.join(REPO, "configs", "vitb32", "coco", "icsd.yaml"), ["model.pretrained=null"])}


def checkpoint_like(name: str) -> dict:
    """Model weights and AdamW-shaped moments (zeros: the bytes written are what matters)."""
    path, opts = STATES[name]
    cfg = load_config(path, [f"data.root={REPO}/dataset_example", f"model.clip={REPO}/configs/models/icsd-tiny.json"]
                      if name == "example" else opts)
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    moments = {n: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "step": torch.tensor(1.0)}
               for n, p in model.named_parameters() if p.requires_grad}
    return {"model": model.state_dict(), "optimizer": {"state": moments}, "epoch": 1}


def save_rename(state: dict, path: str) -> None:
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def save_durable(state: dict, path: str) -> None:
    write_atomic(path, lambda f: torch.save(state, f), "checkpoint")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", nargs="+", default=list(STATES), choices=list(STATES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)
    folder = args.dir or tempfile.mkdtemp(prefix="icsd_ckpt_bench_")
    os.makedirs(folder, exist_ok=True)
    print(f"# {args.repeats} saves of each way, alternated; in {folder}")
    print(f"{'state':<8} {'MB':>8} {'rename_s':>9} {'durable_s':>10} {'durable/rename':>15} {'durable_MB_s':>13}")
    for name in args.states:
        state = checkpoint_like(name)
        path = os.path.join(folder, f"{name}.pth")
        times: dict[str, list[float]] = {"rename": [], "durable": []}
        for _ in range(args.repeats):
            for way, save in (("rename", save_rename), ("durable", save_durable)):
                start = time.perf_counter()
                save(state, path)
                times[way].append(time.perf_counter() - start)
        megabytes = os.path.getsize(path) / 1e6
        rename, durable = (statistics.median(times[w]) for w in ("rename", "durable"))
        print(f"{name:<8} {megabytes:>8.1f} {rename:>9.3f} {durable:>10.3f} {durable / rename:>15.2f} "
              f"{megabytes / durable:>13.1f}")
        os.remove(path)


if __name__ == "__main__":
    main()
