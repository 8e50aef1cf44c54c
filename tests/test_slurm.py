"""SLURM launch (docs/training.md): rank, world size, local rank and master address from ``srun``'s environment
when torchrun's is absent; two hand-launched processes with SLURM variables train as one run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from icsd.distributed import expand_nodelist, slurm_environment

from conftest import EXAMPLE_CONFIG, REPO, tiny_overrides


@pytest.mark.parametrize("nodelist, hosts", [
    ("node01", ["node01"]),
    ("node[01-04],gpu7", ["node01", "node02", "node03", "node04", "gpu7"]),
    ("gpu[8-11]", ["gpu8", "gpu9", "gpu10", "gpu11"]),
    ("gpu[08-11]", ["gpu08", "gpu09", "gpu10", "gpu11"]),
    ("a[1,3-4]x,b2", ["a1x", "a3x", "a4x", "b2"]),
    ("rack[1-2]-n[01,03]", ["rack1-n01", "rack1-n03", "rack2-n01", "rack2-n03"]),
])
def test_nodelist_expansion(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


SRUN = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[3-4]"}


def test_slurm_variables_become_torchrun_ones():
    assert slurm_environment(SRUN) == {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu3",
                                       "MASTER_PORT": "29500"}


def test_step_values_win_and_given_master_is_kept():
    env = {**SRUN, "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "cpu[7-8]", "MASTER_PORT": "1234"}
    assert slurm_environment(env) == {"WORLD_SIZE": "4", "RANK": "5", "LOCAL_RANK": "1", "MASTER_ADDR": "cpu7"}
    assert "MASTER_ADDR" not in slurm_environment({**SRUN, "MASTER_ADDR": "10.0.0.1"})


def test_torchrun_environment_or_no_slurm_leaves_things_alone():
    assert slurm_environment({**SRUN, "WORLD_SIZE": "2"}) is None
    assert slurm_environment({"SLURM_JOB_ID": "7"}) is None  # inside an allocation, not an srun task
    # a batch script running python itself: the job's 8 tasks, but no srun step: one process
    assert slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[3-4]"}) is None
    assert slurm_environment({}) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_srun_style_processes_train_one_run(tmp_path):
    """No torchrun: each process gets only SLURM's variables (and a local master), as ``srun`` would give."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
            and not k.startswith("SLURM_")}
    base.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "SLURM_NTASKS": "2",
                 "SLURM_STEP_NUM_TASKS": "2",
                 "SLURM_JOB_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    opts = tiny_overrides("train.epochs=1", "train.batch_size=16", "eval.splits=[val]",
                          "eval.eval_before_training=false", f"output_dir={tmp_path}/run")
    cmd = [sys.executable, "retrieval.py", "--config", EXAMPLE_CONFIG, "--opts", *opts]
    procs = [subprocess.Popen(cmd, cwd=REPO, env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    run_dir = tmp_path / "run_seed42"
    log = [json.loads(line) for line in open(run_dir / "log.jsonl")]
    assert [r["epoch"] for r in log] == [1]
    # One run of two processes (not two single runs): rank 0 alone reports
    assert "done:" in outputs[0] and "done:" not in outputs[1]
    assert sorted(os.listdir(run_dir)) == ["checkpoint_best.pth", "checkpoint_last.pth", "config.yaml", "log.jsonl",
                                           "out.log"]
