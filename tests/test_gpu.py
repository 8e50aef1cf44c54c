"""Checks that need CUDA (docs/benchmarks.md); skipped without a GPU. ``bench/gpu_check.sh`` runs them with
``pytest -m gpu`` on a GPU machine: AMP steps (bf16, fp16 with its GradScaler) with clipping and
accumulation, torchrun with NCCL and gathered features, a resume restoring the CUDA RNG state, and
evaluation on CUDA equal to CPU evaluation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_distributed import check

import retrieval
from icsd.checkpoint import load_checkpoint
from icsd.config import load_config
from icsd.data.build import load_data_split
from icsd.data.datasets import EvalImages, EvalTexts, load_image
from icsd.distributed import DistEnv
from icsd.evaluate import encode_in_batches, evaluate_split
from icsd.models import build_model
from icsd.train.state import rng_state, set_rng_state

from conftest import EXAMPLE_CONFIG, REPO, tiny_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = ("train.device=cuda",)


def run(tmp_path, name, *opts, resume=None):
    out = str(tmp_path / name)
    argv = ["--config", EXAMPLE_CONFIG, "--opts",
            *tiny_overrides(f"output_dir={out}", "eval.splits=[val]", "eval.eval_before_training=false", *opts, *CUDA)]
    code = retrieval.main(argv + (["--resume", resume] if resume else []))
    return code, out + "_seed42"


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("precision", ["amp_bf16", "amp_fp16"])
def test_amp_step_with_clipping_and_accumulation_on_cuda(tmp_path, precision):
    code, run_dir = run(tmp_path, precision, f"train.precision={precision}", "train.grad_clip=1.0",
                        "train.accum_steps=2", "train.batch_size=16", "train.epochs=1")
    assert code == 0
    (record,) = read_log(run_dir)
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss", "loss_soft", "val_r_mean"))
    state = load_checkpoint(os.path.join(run_dir, "checkpoint_last.pth"))
    assert state["num_updates"] == 300 // 16 // 2
    assert (state["scaler"] != {}) == (precision == "amp_fp16")


def test_torchrun_nccl_with_gathered_features(tmp_path):
    """torchrun --nproc_per_node=1 on CUDA: the process group is NCCL (init_distributed), features gathered."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "retrieval.py",
           "--config", EXAMPLE_CONFIG, "--opts",
           *tiny_overrides(f"output_dir={out}", "train.epochs=1", "train.batch_size=16", "loss.gather_features=true",
                           "train.precision=amp_bf16", "eval.splits=[val]", "eval.eval_before_training=false", *CUDA)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    check(proc)
    (record,) = read_log(f"{out}_seed42")
    assert torch.isfinite(torch.tensor(record["loss"])) and record["loss_soft"] > 0


def test_resume_restores_the_cuda_rng_state(tmp_path):
    common = ("train.epochs=2", "train.save_every=1", "train.batch_size=16")
    code, full = run(tmp_path, "full", *common)
    assert code == 0
    epoch1 = load_checkpoint(os.path.join(full, "checkpoint_epoch1.pth"))
    saved = epoch1["rng"][0]["cuda"]
    assert saved is not None and saved.dtype == torch.uint8
    set_rng_state(epoch1["rng"][0], torch.device("cuda", 0))
    assert torch.equal(torch.cuda.get_rng_state(0), saved)
    assert torch.equal(rng_state(torch.device("cuda", 0))["cuda"], saved)
    code, resumed = run(tmp_path, "resumed", *common, resume=os.path.join(full, "checkpoint_epoch1.pth"))
    assert code == 0
    a = load_checkpoint(os.path.join(full, "checkpoint_last.pth"))["model"]
    b = load_checkpoint(os.path.join(resumed, "checkpoint_last.pth"))["model"]
    for name, tensor in a.items():  # CUDA kernels may reorder sums: equal up to float tolerance
        torch.testing.assert_close(b[name], tensor, rtol=1e-3, atol=1e-4, msg=name)


def test_cuda_evaluation_equals_cpu_evaluation(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full fp32 convolutions, as on the CPU
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = load_config(EXAMPLE_CONFIG, tiny_overrides("eval.image_batch_size=8", "eval.text_batch_size=32"))
    torch.manual_seed(0)
    model, backbone = build_model(cfg)
    split = load_data_split(cfg.data, "test")
    results, features = {}, {}
    for device in ("cpu", "cuda"):
        env = DistEnv(device=torch.device(device, 0) if device == "cuda" else torch.device("cpu"))
        model = model.to(env.device)
        features[device] = encode_in_batches(model.encode_image, EvalImages(split, backbone.transform), 8, env, 0,
                                             "fp32")
        results[device] = evaluate_split(model, split, backbone.pixels, backbone.tokenizer, cfg, env)
    torch.testing.assert_close(features["cuda"], features["cpu"], rtol=1e-4, atol=1e-5)
    host = torch.stack([backbone.pixels.host(load_image(p)) for p in split.image_paths[:4]])
    torch.testing.assert_close(backbone.pixels.normalize(host.cuda()).cpu(), backbone.pixels.normalize(host),
                               rtol=0, atol=1e-6)  # the device normalisation: IEEE float32 on both
    assert results["cuda"] == pytest.approx(results["cpu"], abs=1e-9)
    assert len(EvalTexts(split, backbone.tokenizer)) > split.num_images


def test_a_failing_rank_with_nccl_exits_promptly(tmp_path):
    """torchrun --nproc_per_node=1 on CUDA (NCCL) with DataLoader workers: an out-of-memory error injected into the
    optimizer step ends the job within 60 s of its traceback, no process left (the NCCL teardown after a
    failure must not hang; with one GPU this is as far as NCCL can be tested)."""
    from launch import assert_prompt_clean_exit, train_argv
    from launch import run as launch_run

    message = "CUDA out of memory. Tried to allocate 4.00 GiB"
    done = launch_run(train_argv(str(tmp_path / "run"), 1, *CUDA, "train.precision=amp_bf16", faults=True,
                                 torchrun=True),
                      faults=[{"target": "icsd.train.loop:optimizer_step", "nth": 2, "action": "raise",
                               "message": message}])
    assert done.code != 0
    assert_prompt_clean_exit(done, done.code, message, last=False, within=60)  # as it ran on the H200
