"""Benchmark: ``python -m icsd.report`` over 100 run folders (docs/tools.md; the target is under 2 s).

    .venv/bin/python bench/report_speed.py              # 25 configs x 4 seeds, 30 epochs each
    .venv/bin/python bench/report_speed.py --configs 50 --seeds 4 --epochs 50

Writes synthetic run folders into a temporary folder (deleted at the end): each with the resolved default
config as ``retrieval.py`` saves it, a ``log.jsonl`` with every key the trainer logs (val and test
evaluated every epoch), one run in ten unfinished, one in five with an ``eval_best.json``. Then times the
report (Markdown and JSON) in this process, and the whole command in a fresh interpreter (start-up
included), best of three.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from icsd.config import Config, config_to_dict
from icsd.tools.report import report

METRICS = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10")


def metrics(rng: random.Random, split: str) -> dict:
    values = {m: rng.uniform(20, 95) for m in METRICS}
    values["txt_r_mean"] = sum(values[m] for m in METRICS[:3]) / 3
    values["img_r_mean"] = sum(values[m] for m in METRICS[3:]) / 3
    values["r_mean"] = (values["txt_r_mean"] + values["img_r_mean"]) / 2
    values["rsum"] = sum(values[m] for m in METRICS)
    return {f"{split}_{k}": v for k, v in values.items()}


def make_run(folder: str, config: dict, epochs_done: int, rng: random.Random, eval_json: bool) -> None:
    os.makedirs(folder)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    best, best_score = None, None
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        for epoch in range(1, epochs_done + 1):
            record = {"epoch": epoch, "lr": 1e-5, "contrastive_i2t": 1.0, "contrastive_t2i": 1.0,
                      "loss_contrastive": 1.0, "soft_i2t": 0.1, "soft_t2i": 0.1, "loss_soft": 0.02, "loss": 1.02,
                      "seconds_training": 100.0, "samples_per_second": 500.0, "tau": 0.05, "tau_s": 0.45,
                      "tau_t": 1.0, "epoch_seconds": 110.0, **metrics(rng, "val"), **metrics(rng, "test")}
            if best_score is None or record["val_r_mean"] > best_score:
                best, best_score = epoch, record["val_r_mean"]
            record.update(best_epoch=best, best_val_r_mean=best_score)
            f.write(json.dumps(record) + "\n")
    if eval_json:
        with open(os.path.join(folder, "eval_best.json"), "w") as f:
            json.dump({"test": {k[5:]: v for k, v in metrics(rng, "test").items()}}, f)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    rng = random.Random(0)
    root = tempfile.mkdtemp(prefix="icsd_report_bench_")
    try:
        index = 0
        for c in range(args.configs):
            for seed in range(1, args.seeds + 1):
                config = config_to_dict(Config(output_dir=os.path.join(root, f"config{c:03d}"), seed=seed))
                config["train"]["epochs"] = args.epochs
                done = args.epochs if index % 10 else args.epochs // 2  # one run in ten unfinished
                make_run(os.path.join(root, f"config{c:03d}_seed{seed}"), config, done, rng, index % 5 == 0)
                index += 1
        print(f"{index} run folders, {args.epochs} epochs each, in {root}")

        for fmt in ("markdown", "json"):
            start = time.perf_counter()
            text = report([root], baseline="config000", fmt=fmt)
            print(f"report ({fmt}), in process: {time.perf_counter() - start:.3f} s ({len(text.splitlines())} lines)")
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "icsd.report", root, "--baseline", "config000"], check=True,
                           stdout=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            times.append(time.perf_counter() - start)
        print(f"python -m icsd.report (fresh interpreter, start-up included): best of 3 {min(times):.3f} s")
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
