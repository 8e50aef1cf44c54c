"""Bookkeeping that survives a kill at any instant (SPEC section 5): the process is killed (``os._exit``, as
``kill -9``) at a point of the end-of-epoch bookkeeping, and ``--resume auto`` leaves a whole run folder."""
from __future__ import annotations

import glob
import json
import os

import pytest
from test_preemption import ENV, command, run

from icsd.checkpoint import load_checkpoint

# The checkpoint's temp file written (not renamed); the checkpoint saved (links and log missing); the links
# made (log missing). Killed in the bookkeeping of epoch 2 of 2; selected on val txt_r1 the best epoch of this
# run is epoch 1 (15.0 against 5.0), on r_mean epoch 2, so both sides of "link the best" are crossed.
KILL_POINTS = [("last_tmp", "r_mean"), ("last_saved", "txt_r1"), ("epoch_linked", "r_mean")]


@pytest.mark.parametrize("point, select", KILL_POINTS)
def test_kill_at_any_instant_of_the_bookkeeping(tmp_path, point, select):
    """Killed (os._exit, as kill -9) at a point of the last epoch's end-of-epoch bookkeeping, then
    --resume auto: the log holds every finished epoch once, checkpoint_best.pth is the epoch the log names
    as best, checkpoint_epoch{N}.pth is epoch N, and no temp file is left."""
    out = str(tmp_path / "run")
    opts = ("train.save_every=1", "train.epochs=2", f"eval.select_metric={select}")
    proc = run(command(out, 1, *opts), env={**ENV, "ICSD_TEST_KILL_AT": f"{point}:2"})
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
