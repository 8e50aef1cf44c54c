"""Short real runs shared by the results tests (report, plot, show, export): made once per session.

Two example configs x two seeds on dataset_example with the tiny model (contrastive: 1 epoch, icsd: 2
epochs), val and test evaluated every epoch, plus ``evaluation.py --out`` of icsd seed 1's best checkpoint
written as that run's ``eval_best.json``.
"""
from __future__ import annotations

import json
import os

from conftest import REPO, tiny_overrides

CONFIGS = {"contrastive": 1, "icsd": 2}  # config -> epochs
SEEDS = (1, 2)
_CACHE: dict = {}


def read_log(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def example_runs(tmp_path_factory) -> dict:
    """{"root": folder holding the runs, "contrastive": [run dirs by seed], "icsd": [...],
    "eval_json": path}. Cached in the process, so every test module that asks reuses the same runs."""
    if _CACHE:
        return _CACHE
    import evaluation
    import retrieval

    root = str(tmp_path_factory.mktemp("example_runs"))
    runs = {"root": root}
    for name, epochs in CONFIGS.items():
        runs[name] = []
        for seed in SEEDS:
            out = os.path.join(root, name)
            argv = ["--config", os.path.join(REPO, "configs", "example", f"{name}.yaml"), "--seed", str(seed),
                    "--opts", *tiny_overrides(f"output_dir={out}", f"train.epochs={epochs}",
                                              "eval.splits=[val, test]", "eval.eval_before_training=false")]
            assert retrieval.main(argv) == 0
            runs[name].append(f"{out}_seed{seed}")
    eval_json = os.path.join(runs["icsd"][0], "eval_best.json")
    assert evaluation.main(["--checkpoint", os.path.join(runs["icsd"][0], "checkpoint_best.pth"),
                            "--split", "val", "test", "--out", eval_json]) == 0
    runs["eval_json"] = eval_json
    _CACHE.update(runs)
    return _CACHE
