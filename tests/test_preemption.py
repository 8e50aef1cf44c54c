"""Preemption and crash safety (docs/training.md): SIGTERM mid-epoch stops at a step boundary with a recovery
checkpoint and ``--resume auto`` ends exactly like an uninterrupted run (1 process and torchrun); a kill
at any instant of the end-of-epoch bookkeeping leaves a run folder that ``--resume auto`` makes whole."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from launch import torchrun_worker

from icsd.checkpoint import load_checkpoint

from conftest import EXAMPLE_CONFIG, REPO, tiny_overrides

TIMING_KEYS = {"epoch_seconds", "seconds_training", "samples_per_second", "data_time_share"}


def command(out: str, nproc: int, *opts: str, resume: bool = False) -> list[str]:
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    argv = [*launcher, os.path.join(REPO, "retrieval.py"), "--config", EXAMPLE_CONFIG, "--opts",
            *tiny_overrides(f"output_dir={out}", "train.epochs=2", "eval.splits=[val]", "train.log_every=1",
                            "eval.eval_before_training=false", f"train.batch_size={32 // nproc}", *opts)]
    return argv + (["--resume", "auto"] if resume else [])


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run(argv: list[str], env: dict = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def run_until(argv: list[str], marker: str, sig: int, rank: int | None = None) -> subprocess.CompletedProcess:
    """Start ``argv`` in its own process group; when ``marker`` appears in its output, send ``sig`` to the
    whole group (as a cluster scheduler does), or only to torchrun's worker of ``rank``; wait for the end."""
    proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            if rank is None:
                os.killpg(proc.pid, sig)
            else:
                os.kill(torchrun_worker(proc.pid, rank), sig)
            break
    rest, _ = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(lines) + rest, "")


def final_state(run_dir: str) -> tuple[dict, list[dict]]:
    model = load_checkpoint(os.path.join(run_dir, "checkpoint_last.pth"))["model"]
    log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    return model, [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in log]


def assert_same_run(a: str, b: str) -> None:
    (model_a, log_a), (model_b, log_b) = final_state(a), final_state(b)
    assert [r["epoch"] for r in log_a] == [1, 2] and log_a == log_b
    for name, tensor in model_a.items():
        assert torch.equal(tensor, model_b[name]), name
    assert not glob.glob(os.path.join(b, "*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """An uninterrupted single-process run."""
    out = str(tmp_path_factory.mktemp("ref") / "run")
    proc = run(command(out, 1))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out + "_seed42"


def test_sigterm_mid_epoch_stops_with_a_recovery_checkpoint_and_resumes_exactly(tmp_path, reference):
    out = str(tmp_path / "run")
    start = time.perf_counter()
    proc = run_until(command(out, 1), "epoch 1/2 step 4/9", signal.SIGTERM)
    assert proc.returncode == 143, proc.stdout[-3000:]
    stops = [line for line in proc.stdout.splitlines() if line.startswith("stopped by SIGTERM in epoch 1 at step")]
    assert len(stops) == 1 and "recovery checkpoint" in stops[0] and "--resume auto" in stops[0], proc.stdout
    assert "Traceback" not in proc.stdout
    state = load_checkpoint(os.path.join(out + "_seed42", "checkpoint_last.pth"))
    assert state["epoch"] == 0 and state["position"]["epoch"] == 1 and 4 <= state["position"]["update"] < 9
    assert not os.path.exists(os.path.join(out + "_seed42", "checkpoint_best.pth"))
    assert time.perf_counter() - start < 120
    proc = run(command(out, 1, resume=True))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"at epoch 1, step {state['position']['update']}/9" in proc.stdout
    assert_same_run(reference, out + "_seed42")


def test_checkpoint_every_steps_survives_kill_9(tmp_path, reference):
    """A recovery checkpoint every 4 optimizer steps of the run (9 per epoch: after steps 12 and 16, i.e.
    steps 3 and 7 of epoch 2); SIGKILL (no chance to save) in epoch 2 after step 4: the run resumes after
    step 3 of epoch 2 and ends like the uninterrupted run."""
    out = str(tmp_path / "run")
    opts = ("train.checkpoint_every_steps=4", "data.num_workers=2")  # resume is exact with workers too
    proc = run_until(command(out, 1, *opts), "epoch 2/2 step 4/9", signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(os.path.join(out + "_seed42", "checkpoint_last.pth"))
    assert state["epoch"] == 1 and state["position"]["epoch"] == 2 and state["position"]["update"] == 3
    proc = run(command(out, 1, *opts, resume=True))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_same_run(reference, out + "_seed42")


def test_sigterm_under_torchrun_stops_every_rank_and_resumes_exactly(tmp_path):
    """SIGTERM to rank 1 alone: rank 0 learns of it through the per-step agreement and stops at the same
    step (it is rank 0 that reports the stop and writes the recovery checkpoint)."""
    ref = str(tmp_path / "ref")
    proc = run(command(ref, 2))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = str(tmp_path / "run")
    proc = run_until(command(out, 2, "data.num_workers=2"), "epoch 1/2 step 4/9", signal.SIGTERM, rank=1)
    assert proc.returncode != 0
    assert proc.stdout.count("stopped by SIGTERM in epoch 1 at step") == 1, proc.stdout[-4000:]
    state = load_checkpoint(os.path.join(out + "_seed42", "checkpoint_last.pth"))
    assert state["position"]["epoch"] == 1 and len(state["rng"]) == 2
    proc = run(command(out, 2, "data.num_workers=2", resume=True))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_same_run(ref + "_seed42", out + "_seed42")
