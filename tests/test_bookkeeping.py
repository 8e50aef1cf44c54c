"""Bookkeeping that survives a kill at any instant (docs/training.md): the process is killed (``os._exit``, as
``kill -9``, injected through ``tests/scripts/with_faults.py``) at a point of the end-of-epoch bookkeeping, and
``--resume auto`` leaves a whole run folder."""
from __future__ import annotations

import glob
import json
import os

import pytest
from launch import WITH_FAULTS
from test_preemption import ENV, command, run

from icsd.checkpoint import load_checkpoint

# Killed in the bookkeeping of epoch 2 of 2: the checkpoint's temp file written, not renamed (before its 2nd
# rename onto checkpoint_last.pth); the checkpoint saved, links and log missing (after that rename); the links
# made, the log missing (before the 3rd rename onto log.jsonl: the fresh start's, epoch 1's, epoch 2's).
# Selected on val txt_r1 the best epoch of this run is epoch 1 (15.0 against 5.0), on r_mean epoch 2, so
# both sides of "link the best" are crossed. The second case runs with DataLoader workers.
KILL_POINTS = {"last_tmp": {"match": "checkpoint_last.pth", "nth": 2, "when": "before"},
               "last_saved": {"match": "checkpoint_last.pth", "nth": 2, "when": "after"},
               "epoch_linked": {"match": "log.jsonl", "nth": 3, "when": "before"}}


@pytest.mark.parametrize("point, select, workers", [("last_tmp", "r_mean", 0), ("last_saved", "txt_r1", 2),
                                                    ("epoch_linked", "r_mean", 0)])
def test_kill_at_any_instant_of_the_bookkeeping(tmp_path, point, select, workers):
    """Killed (os._exit, as kill -9) at a point of the last epoch's end-of-epoch bookkeeping, then
    --resume auto: the log holds every finished epoch once, checkpoint_best.pth is the epoch the log names
    as best, checkpoint_epoch{N}.pth is epoch N, and no temp file is left."""
    out = str(tmp_path / "run")
    opts = ("train.save_every=1", "train.epochs=2", f"eval.select_metric={select}", f"data.num_workers={workers}")
    fault = {"target": "os:replace", "action": "exit", "code": 137, **KILL_POINTS[point]}
    argv = command(out, 1, *opts)
    proc = run([argv[0], WITH_FAULTS, *argv[1:]], env={**ENV, "ICSD_TEST_FAULTS": json.dumps([fault])})
    assert proc.returncode == 137, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_dir = out + "_seed42"
    if point == "last_tmp":
        assert glob.glob(os.path.join(run_dir, "*.tmp"))  # the case that used to leave a 45 MB file forever
    proc = run(command(out, 1, *opts, resume=True))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    assert [r["epoch"] for r in log] == [1, 2]
    best = log[-1]["best_epoch"]
    assert best == max(log, key=lambda r: r[f"val_{select}"])["epoch"] == (1 if select == "txt_r1" else 2)
    assert load_checkpoint(os.path.join(run_dir, "checkpoint_best.pth"))["epoch"] == best
    for epoch in (1, 2):
        assert load_checkpoint(os.path.join(run_dir, f"checkpoint_epoch{epoch}.pth"))["epoch"] == epoch
    last = os.path.join(run_dir, "checkpoint_last.pth")
    assert os.path.samefile(os.path.join(run_dir, "checkpoint_best.pth"), last) == (best == 2)
    assert not glob.glob(os.path.join(run_dir, "*.tmp"))
