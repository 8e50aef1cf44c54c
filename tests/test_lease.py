"""One run per run folder: the lease (``run.lock``) a run holds for its whole life, refused to a second run
while its holder lives, taken over when the holder is gone (a dead process on this host, a lease not
refreshed for minutes from another host), or by force."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from launch import run, train_argv

from icsd import lease as lease_module
from icsd.config import load_config
from icsd.errors import FileWriteError, RunFolderBusy
from icsd.lease import Holder, Lease, LeaseHeld, LeaseLost
from icsd.train.run_folder import RunFolder

from conftest import EXAMPLE_CONFIG


def RunLease(folder: str) -> Lease:  # noqa: N802 - a run folder's lease, as icsd.train.run_folder takes it
    return Lease(os.path.join(folder, "run.lock"))


def write_lease(folder, **changes) -> Holder:
    holder = dataclasses.replace(Holder.me(), token="other", **changes)
    (folder / "run.lock").write_text(json.dumps(dataclasses.asdict(holder)))
    return holder


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_keeps_the_folder(tmp_path):
    first = RunLease(str(tmp_path))
    first.acquire()
    try:
        with pytest.raises(LeaseHeld, match=f"run.lock is held by pid {os.getpid()} on {socket.gethostname()}, "
                                            f"started "):
            RunLease(str(tmp_path)).acquire()
        first.check()  # still ours
    finally:
        first.release()
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("holder", ["dead pid", "reused pid", "other host, silent for 10 minutes"])
def test_a_lease_whose_holder_is_gone_is_taken_over(tmp_path, holder, caplog):
    if holder == "dead pid":
        stale = write_lease(tmp_path, pid=dead_pid())
    elif holder == "reused pid":  # this pid, but another process (another start time)
        stale = write_lease(tmp_path, process_start="1")
    else:
        stale = write_lease(tmp_path, host="gpu-node-17", refreshed=time.time() - 600)
    lease = RunLease(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="icsd"):
        lease.acquire()
    assert f"took over the lease {tmp_path}/run.lock from {stale.describe()}: its holder is gone" in caplog.text
    assert json.loads((tmp_path / "run.lock").read_text())["token"] == lease.holder.token
    lease.release()


def test_another_hosts_fresh_lease_is_respected_unless_forced(tmp_path, caplog):
    write_lease(tmp_path, host="gpu-node-17", refreshed=time.time() - 30)
    with pytest.raises(LeaseHeld, match="on gpu-node-17"):
        RunLease(str(tmp_path)).acquire()
    lease = RunLease(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="icsd"):
        lease.acquire(force=True)
    assert "forced (--force-unlock)" in caplog.text
    lease.release()


def test_a_run_that_lost_its_lease_stops_writing(tmp_path):
    """The run folder's save checks the lease first: a run whose lease was taken over (it was frozen, the
    other run saw a stale lease) writes no checkpoint, and names the new holder."""
    cfg = load_config(EXAMPLE_CONFIG, [f"output_dir={tmp_path}/run"])
    folder = RunFolder(cfg)
    assert folder.open(resume=None) is None
    lease = folder.lease
    thief = write_lease(tmp_path / "run_seed42", pid=12345, host="gpu-node-3")
    lease.refresh()  # the refresh thread notices and stops renewing
    with pytest.raises(LeaseLost, match=re.escape(f"was taken over by {thief.describe()}")):
        lease.check()
    with pytest.raises(RunFolderBusy, match=re.escape(f"lost its folder's lease to {thief.describe()}: it stops "
                                                      f"without writing")):
        folder.save({"epoch": 1})
    assert not os.path.exists(folder.last)
    folder.close()
    assert json.loads((tmp_path / "run_seed42" / "run.lock").read_text())["token"] == "other"  # the thief's stays


def test_the_lease_is_refreshed_and_a_failed_refresh_is_retried(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(lease_module, "REFRESH_SECONDS", 0.05)
    real, calls = lease_module.write_json, []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first refresh
            raise FileWriteError("writing the lease failed: no space left on the device", no_space=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(lease_module, "write_json", failing_once)
    lease = RunLease(str(tmp_path))
    lease.acquire()
    before = json.loads((tmp_path / "run.lock").read_text())["refreshed"]
    with caplog.at_level(logging.WARNING, logger="icsd.lease"):
        time.sleep(0.5)
    assert json.loads((tmp_path / "run.lock").read_text())["refreshed"] > before  # refreshed after the failure
    assert "could not refresh" in caplog.text and len(calls) > 2
    lease.release()


def test_a_second_run_of_any_size_stops_at_start_and_a_dead_runs_folder_is_taken_over(tmp_path):
    """Run A trains; run B (torchrun, 2 ranks) on the same folder stops at once, naming A; A is killed
    (kill -9: no chance to release); run C takes the folder over and trains."""
    out = str(tmp_path / "run")
    opts = ("train.epochs=30", "data.num_workers=0")  # A would train far longer than the test lasts
    a = subprocess.Popen(train_argv(out, 1, *opts), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        for line in a.stdout:
            if "epoch 1/30 step 2/9" in line:
                break
        b = run(train_argv(out, 2, *opts, resume="auto"))
        assert b.code != 0
        assert b.count(f"is in use by another run (pid {a.pid} on {socket.gethostname()}") == 1, b.output[-3000:]
        assert b.seconds_after("is in use by another run") < 60 and b.leftovers == []
        assert a.poll() is None  # A never noticed
    finally:
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
    c = run(train_argv(out, 1, "train.epochs=1", "data.num_workers=0", resume="auto"))
    assert c.code == 0, c.output[-3000:]
    assert f"run.lock from pid {a.pid} on {socket.gethostname()}" in c.output and "its holder is gone" in c.output
    assert not os.path.exists(os.path.join(out + "_seed42", "run.lock"))


def test_force_unlock_needs_resume(tmp_path):
    done = run(train_argv(str(tmp_path / "run"), 1, extra=("--force-unlock",)))
    assert done.code == 1 and "--force-unlock takes over a run folder to continue it: use it with --resume" in \
        done.output
