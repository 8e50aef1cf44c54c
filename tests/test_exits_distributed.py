"""Every exit is prompt on every rank under ``torchrun --nproc_per_node=2`` (gloo on CPU), with DataLoader
workers: a rank that fails actually exits, so torchrun stops the other; no rank exits while the main rank is
still writing the recovery checkpoint; work that the main rank does alone before the first collective (the
text-feature cache) does not strand the other rank when it fails."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import threading
import time

import psutil
import pytest
from launch import assert_prompt_clean_exit, run, torchrun_worker, train_argv

from icsd.checkpoint import load_checkpoint

from conftest import EXAMPLE_DATA, ORIGINALS


def test_a_rank_failing_in_backward_stops_the_job(tmp_path):
    """Rank 1's backward raises (as an out-of-memory error would): rank 1 shows its traceback and exits, rank 0
    stops too, and torchrun ends within 30 s of the traceback."""
    message = "CUDA out of memory. Tried to allocate 1.00 GiB"
    done = run(train_argv(str(tmp_path / "run"), 2, faults=True),
               faults=[{"target": "torch:Tensor.backward", "nth": 3, "rank": 1, "action": "raise", "message": message}])
    assert done.code != 0
    assert_prompt_clean_exit(done, done.code, message, last=False)


def test_a_rank_failing_in_the_optimizer_step_stops_the_job(tmp_path):
    message = "CUDA out of memory. Tried to allocate 3.00 GiB"
    done = run(train_argv(str(tmp_path / "run"), 2, faults=True),
               faults=[{"target": "icsd.train.loop:optimizer_step", "nth": 2, "rank": 0, "action": "raise",
                        "message": message}])
    assert done.code != 0
    assert_prompt_clean_exit(done, done.code, message, last=False)


@pytest.mark.parametrize("fault, message", [
    ({"target": "icsd.losses.criterion:Criterion.__call__", "nth": 2, "rank": 1, "action": "nan"},
     "error: non-finite loss ("),
    ({"target": "torch:save", "match": "checkpoint_last.pth", "rank": 0, "action": "disk_full"},
     "failed: no space left on the device: the disk is full. The previous checkpoint is intact"),
    ({"target": "icsd.evaluate:recall_metrics", "nth": 1, "rank": 0, "action": "raise",
      "message": "CUDA out of memory. Tried to allocate 4.00 GiB"}, "CUDA out of memory. Tried to allocate 4.00 GiB"),
], ids=["non-finite loss on rank 1", "checkpoint write fails on rank 0", "evaluation fails on rank 0"])
def test_a_failure_on_one_rank_ends_the_job(tmp_path, fault, message):
    """A non-finite loss on one rank stops both at the same step (the loss sums are reduced); a failed
    checkpoint write or an error in evaluation on the main rank ends it, and torchrun stops the other."""
    done = run(train_argv(str(tmp_path / "run"), 2, faults=True), faults=[fault])
    assert done.code != 0
    assert_prompt_clean_exit(done, done.code, message, last=False)
    assert not glob.glob(str(tmp_path / "run_seed42" / "*.tmp"))  # a failed write leaves no temp file


def test_an_unreadable_image_stops_every_rank(tmp_path):
    import json

    root = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATA, root)
    name = json.load(open(root / "train.json"))[0]["image_path"]
    (root / name).write_bytes((root / name).read_bytes()[:2000])
    done = run(train_argv(str(tmp_path / "run"), 2, f"data.root={root}", *ORIGINALS))
    assert done.code != 0
    assert_prompt_clean_exit(done, done.code, "error: cannot read image ", last=False)
    assert done.count("on an unreadable training image: recovery checkpoint") == 1


def test_no_rank_exits_before_the_recovery_checkpoint_is_written(tmp_path):
    """SIGTERM to rank 1 while rank 0's save takes 6 s (injected delay): rank 1 exits only after it, so
    torchrun never terminates rank 0 in the middle of the save, and the recovery checkpoint is whole."""
    out = str(tmp_path / "run")
    delay, marks = 6.0, {}

    def on_line(line, proc):
        if "epoch 1/1 step 3/9" not in line or marks:
            return
        ranks = {r: torchrun_worker(proc.pid, r) for r in (0, 1)}
        marks["signal"] = time.monotonic()
        os.kill(ranks[1], signal.SIGTERM)

        def watch(pid: int, rank: int) -> None:
            while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.05)
            marks[rank] = time.monotonic()

        for rank, pid in ranks.items():
            threading.Thread(target=watch, args=(pid, rank), daemon=True).start()

    done = run(train_argv(out, 2, faults=True), on_line=on_line,
               faults=[{"target": "torch:save", "rank": 0, "action": "sleep", "seconds": delay}])
    assert done.code != 0, done.output[-3000:]
    assert done.count("stopped by SIGTERM in epoch 1 at step") == 1, done.output[-3000:]
    time.sleep(0.5)
    assert marks[1] - marks["signal"] > delay, (marks, done.output[-3000:])  # rank 1 waited for the save
    state = load_checkpoint(os.path.join(out + "_seed42", "checkpoint_last.pth"))
    assert state["position"]["epoch"] == 1 and len(state["rng"]) == 2 and state["model"]
    assert done.leftovers == []


def test_the_main_rank_failing_to_build_the_text_cache_stops_the_other(tmp_path):
    """The text-feature cache is built by rank 0 alone while rank 1 waits: a teacher that cannot be loaded
    stops both, with one line."""
    root = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATA, root, ignore=shutil.ignore_patterns("pics"))
    os.symlink(os.path.join(EXAMPLE_DATA, "pics"), root / "pics")
    done = run(train_argv(str(tmp_path / "run"), 2, f"data.root={root}", "data.text_features={split}_missing.npy",
                          f"data.text_teacher={tmp_path}/no-such-model"))
    assert done.code != 0
    assert_prompt_clean_exit(done, done.code, "error: cannot load the sentence-transformers text teacher", last=False)


def test_the_main_rank_failing_to_build_the_pixel_cache_stops_the_other(tmp_path):
    """The pixel cache is built by rank 0 alone (over its DataLoader workers) while rank 1 waits: an unreadable
    image stops both, with one line naming the cache and the image."""
    import json

    root = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATA, root, ignore=shutil.ignore_patterns("*_pixels*", "*_tokens*"))
    name = json.load(open(root / "train.json"))[0]["image_path"]
    (root / name).write_bytes((root / name).read_bytes()[:2000])
    done = run(train_argv(str(tmp_path / "run"), 2, f"data.root={root}", "data.pixel_cache={split}_pixels.npy",
                          "data.token_cache=null"))
    assert done.code != 0
    assert_prompt_clean_exit(done, done.code, f"error: building {root}/train_pixels.npy: cannot read image ",
                             last=False)
    assert not os.path.exists(root / "train_pixels.npy")  # nothing half-built is taken for a cache
