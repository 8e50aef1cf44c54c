"""torchrun --nproc_per_node=2 with gloo on CPU: gathered loss/gradients, evaluation and training agree
with a single process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from icsd.checkpoint import load_checkpoint
from icsd.config import config_to_dict, load_config
from icsd.models import build_model

from conftest import EXAMPLE_CONFIG, REPO, tiny_overrides

SCRIPTS = os.path.join(REPO, "tests", "scripts")


def launch(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    """Run a Python entry point alone (nproc 1) or under torchrun (gloo, CPU), one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_gathered_loss_and_gradients_equal_the_single_process_global_batch(tmp_path):
    opts = ["--opts", "loss.gather_features=true", "model.pdm.enabled=false"]
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    check(launch([os.path.join(SCRIPTS, "ddp_grad_check.py"), one, "16", *opts], 1))
    check(launch([os.path.join(SCRIPTS, "ddp_grad_check.py"), two, "16", *opts], 2))
    a, b = torch.load(one), torch.load(two)
    for name in ("loss", "loss_contrastive", "loss_soft"):
        torch.testing.assert_close(b["terms"][name], a["terms"][name], rtol=1e-5, atol=0)
    assert a["terms"]["loss_soft"] > 0
    assert set(a["grads"]) == set(b["grads"]) and len(a["grads"]) > 20
    for name, grad in a["grads"].items():
        torch.testing.assert_close(b["grads"][name], grad, rtol=1e-5, atol=1e-8, msg=name)


def test_local_loss_differs_from_the_global_one(tmp_path):
    """gather_features: false (the reference): each rank's loss sees only its own half of the batch."""
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    opts = ["--opts", "loss.gather_features=false", "model.pdm.enabled=false"]
    check(launch([os.path.join(SCRIPTS, "ddp_grad_check.py"), one, "16", *opts], 1))
    check(launch([os.path.join(SCRIPTS, "ddp_grad_check.py"), two, "16", *opts], 2))
    assert not torch.allclose(torch.load(one)["terms"]["loss"], torch.load(two)["terms"]["loss"], rtol=1e-3)


def test_two_process_evaluation_equals_single_process(tmp_path):
    cfg = load_config(EXAMPLE_CONFIG, tiny_overrides("eval.image_batch_size=6", "eval.text_batch_size=16"))
    torch.manual_seed(3)
    model, _ = build_model(cfg)
    ckpt = str(tmp_path / "random.pth")
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg)}, ckpt)
    results = {}
    for nproc in (1, 2):
        out = str(tmp_path / f"metrics{nproc}.json")
        check(launch(["evaluation.py", "--checkpoint", ckpt, "--split", "val", "test", "train", "--out", out], nproc))
        results[nproc] = json.load(open(out))
    assert results[1] == results[2]
    assert set(results[1]) == {"val", "test", "train"}


def test_two_process_training_and_resume(tmp_path):
    """2 x batch 16 for 2 epochs: one log, one set of checkpoints, identical parameters on both ranks; a run
    resumed under torchrun from the epoch-1 checkpoint ends with the same parameters."""
    common = tiny_overrides("train.epochs=2", "train.batch_size=16", "eval.splits=[val]", "train.save_every=1",
                            "eval.eval_before_training=false")
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full_dir.mkdir(), resumed_dir.mkdir()
    check(launch([os.path.join(SCRIPTS, "ddp_train.py"), str(full_dir), "--opts", *common,
                  f"output_dir={full_dir}/run"], 2))
    run_dir = f"{full_dir}/run_seed42"
    assert sorted(os.listdir(run_dir)) == ["checkpoint_best.pth", "checkpoint_epoch1.pth", "checkpoint_epoch2.pth",
                                           "checkpoint_last.pth", "config.yaml", "log.jsonl", "out.log"]
    log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    assert [r["epoch"] for r in log] == [1, 2]
    rank0, rank1 = torch.load(full_dir / "rank0.pt"), torch.load(full_dir / "rank1.pt")
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name
    last = load_checkpoint(os.path.join(run_dir, "checkpoint_last.pth"))["model"]
    assert all(torch.equal(last[n], t) for n, t in rank0.items())

    check(launch([os.path.join(SCRIPTS, "ddp_train.py"), str(resumed_dir), "--opts", *common,
                  f"output_dir={resumed_dir}/run", "--resume", os.path.join(run_dir, "checkpoint_epoch1.pth")], 2))
    resumed = torch.load(resumed_dir / "rank0.pt")
    for name, tensor in rank0.items():
        assert torch.equal(tensor, resumed[name]), name


@pytest.mark.parametrize("opt, message", [("data.root={tmp}/missing", "error: data.root not found: {tmp}/missing"),
                                          ("train.epohcs=1", "error: {config} (with --opts")])
def test_user_error_under_torchrun_is_printed_once(tmp_path, opt, message):
    """Met alike by both ranks, inside the run (data) or before it (config): printed by rank 0 alone."""
    proc = launch(["retrieval.py", "--config", EXAMPLE_CONFIG, "--opts",
                   *tiny_overrides(f"output_dir={tmp_path}/run", opt.format(tmp=tmp_path))], 2)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert output.count(message.format(tmp=tmp_path, config=EXAMPLE_CONFIG)) == 1, output
