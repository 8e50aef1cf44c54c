"""Every exit is prompt, with DataLoader workers running (docs/training.md): the real entry point as a
subprocess (interpreter exit is where a job used to hang), ``data.num_workers=2`` (persistent workers), each
stop path with its exit status, its message shown once and last, the process gone within 30 s of the message,
and no process of the run left. Faults go in through ``tests/scripts/with_faults.py``."""
from __future__ import annotations

import errno
import glob
import os
import shutil
import signal
import subprocess

import pytest
import torch
from launch import assert_prompt_clean_exit, run, signal_at, train_argv

from icsd.checkpoint import load_checkpoint
from icsd.errors import FileWriteError
from icsd.files import write_atomic

from conftest import EXAMPLE_DATA, ORIGINALS


def truncated_train_image(tmp_path) -> str:
    """A copy of the example data whose first training image is cut to a third (it still opens)."""
    import json

    root = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATA, root)
    name = json.load(open(root / "train.json"))[0]["image_path"]
    data = (root / name).read_bytes()
    (root / name).write_bytes(data[:len(data) // 3])
    return str(root)


def test_unreadable_training_image_mid_epoch(tmp_path):
    out = str(tmp_path / "run")
    done = run(train_argv(out, 1, f"data.root={truncated_train_image(tmp_path)}", *ORIGINALS))
    assert_prompt_clean_exit(done, 1, "error: cannot read image ")
    assert "on an unreadable training image: recovery checkpoint" in done.output
    assert load_checkpoint(os.path.join(out + "_seed42", "checkpoint_last.pth"))["position"]["epoch"] == 1


@pytest.mark.parametrize("target, nth", [("icsd.models.icsd_model:ICSDModel.forward", 3),
                                         ("icsd.evaluate:recall_metrics", 1)])
def test_an_unexpected_exception_ends_the_process(tmp_path, target, nth):
    """In the step's forward (a CUDA out-of-memory error, as the GPU would raise it) and in evaluation: the
    traceback is the last thing shown, and nothing waits for the workers."""
    message = "CUDA out of memory. Tried to allocate 2.00 GiB"
    done = run(train_argv(str(tmp_path / "run"), 1, faults=True),
               faults=[{"target": target, "nth": nth, "action": "raise", "message": message}])
    assert_prompt_clean_exit(done, 1, message)
    assert "Traceback (most recent call last)" in done.output


def test_a_non_finite_loss_ends_the_process(tmp_path):
    done = run(train_argv(str(tmp_path / "run"), 1, faults=True),
               faults=[{"target": "icsd.losses.criterion:Criterion.__call__", "nth": 2, "action": "nan"}])
    assert_prompt_clean_exit(done, 1, "error: non-finite loss (")


@pytest.mark.parametrize("sig, code, message", [
    (signal.SIGTERM, 143, "stopped by SIGTERM in epoch 1 at step "),
    (signal.SIGINT, 130, "stopped by SIGINT in epoch 1 at step "),
    (signal.SIGUSR1, 138, "stopped by SIGUSR1 in epoch 1 at step "),
])
def test_a_stop_signal_with_workers(tmp_path, sig, code, message):
    out = str(tmp_path / "run")
    done = run(train_argv(out, 1), on_line=signal_at("epoch 1/1 step 2/9", sig))
    assert_prompt_clean_exit(done, code, message)
    assert load_checkpoint(os.path.join(out + "_seed42", "checkpoint_last.pth"))["position"]["update"] >= 2


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """The first Ctrl-C stops at the step boundary and starts writing the recovery checkpoint (made slow here);
    a second one a second later ends the run at once, the half-written checkpoint removed."""
    out = str(tmp_path / "run")
    done = run(train_argv(out, 1, faults=True), faults=[{"target": "torch:save", "action": "sleep", "seconds": 30}],
               on_line=signal_at("epoch 1/1 step 2/9", signal.SIGINT, times=2, pause=1.0))
    assert_prompt_clean_exit(done, 130, "interrupted (no recovery checkpoint written)")
    assert os.listdir(out + "_seed42") and not glob.glob(os.path.join(out + "_seed42", "*.pth*"))


def _mount_small_disk(folder: str, megabytes: int) -> bool:
    os.makedirs(folder)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", folder], capture_output=True)
    return proc.returncode == 0


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """Epoch 2's checkpoint does not fit next to epoch 1's (45 MB each with the optimizer state) on a 64 MB
    disk: a small tmpfs when the platform allows (root), else the same failure injected into torch.save. The
    message says the disk is full and names the file; the temp file is gone; epoch 1's checkpoint loads."""
    disk = str(tmp_path / "disk")
    real = _mount_small_disk(disk, 64)
    try:
        faults = [] if real else [{"target": "torch:save", "nth": 2, "action": "disk_full"}]
        out = os.path.join(disk, "run")
        done = run(train_argv(out, 1, "train.epochs=2", faults=True), faults=faults)
        last = os.path.join(out + "_seed42", "checkpoint_last.pth")
        assert_prompt_clean_exit(done, 1, f"error: writing the checkpoint {last} failed: no space left on the device: "
                                          f"the disk is full. The previous checkpoint is intact")
        assert not glob.glob(os.path.join(out + "_seed42", "*.tmp"))
        assert load_checkpoint(last)["epoch"] == 1
    finally:
        if real:
            subprocess.run(["umount", disk], capture_output=True)


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "the disk quota is reached"),
                                        (errno.EIO, "Input/output error")])
def test_a_failed_write_names_its_cause_and_leaves_the_old_file(tmp_path, code, says):
    path = str(tmp_path / "checkpoint.pth")
    write_atomic(path, lambda f: torch.save({"epoch": 1}, f))

    def failing(f):
        f.write(b"partial")
        raise OSError(code, os.strerror(code))

    with pytest.raises(FileWriteError, match=f"writing the checkpoint {path} failed: .*{says}") as info:
        write_atomic(path, failing, "checkpoint")
    assert info.value.no_space == (code != errno.EIO)
    assert os.listdir(tmp_path) == ["checkpoint.pth"] and torch.load(path)["epoch"] == 1


def test_a_checkpoint_link_falls_back_to_a_durable_copy(tmp_path, monkeypatch):
    """Where the file system has no hard links, best/epoch checkpoints are copies written like every file (temp
    name, sync, rename): whole, and on a full disk the writer's message, with no temp file left."""
    from icsd.train import run_folder

    src, dst = str(tmp_path / "checkpoint_last.pth"), str(tmp_path / "checkpoint_best.pth")
    write_atomic(src, lambda f: torch.save({"epoch": 3}, f))
    monkeypatch.setattr(run_folder.os, "link", lambda a, b: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    run_folder.link_checkpoint(src, dst)
    assert not os.path.samefile(src, dst) and torch.load(dst)["epoch"] == 3

    def full(source, f):
        f.write(b"part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_folder.shutil, "copyfileobj", full)
    with pytest.raises(FileWriteError, match=f"writing the checkpoint {tmp_path}/checkpoint_epoch3.pth failed: "
                                             f"no space left"):
        run_folder.link_checkpoint(src, str(tmp_path / "checkpoint_epoch3.pth"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_best.pth", "checkpoint_last.pth"]
