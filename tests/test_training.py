"""Training end to end on dataset_example: resume equivalence, evaluation reproducibility, selection."""
from __future__ import annotations

import json
import os

import pytest
import torch

import evaluation
import retrieval
from icsd.checkpoint import load_checkpoint
from icsd.train import session, trainer

from conftest import EXAMPLE_CONFIG, ORIGINALS, tiny_overrides

TIMING_KEYS = {"epoch_seconds", "seconds_training", "samples_per_second", "data_time_share"}


def run(tmp_path, name, *opts, resume=None, extra=()):
    out = str(tmp_path / name)
    argv = ["--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(f"output_dir={out}", "train.epochs=2",
                                                                   "eval.splits=[val, test]", *opts), *extra]
    if resume:
        argv += ["--resume", resume]
    code = retrieval.main(argv)
    return code, out + "_seed42"


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    code, full = run(tmp_path, "full")
    assert code == 0

    calls = {"n": 0}
    real_epoch = trainer.train_one_epoch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated preemption in epoch 2")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    code, _ = run(tmp_path, "resumed")  # a crash inside the epoch (as a second Ctrl-C): nothing saved for it
    assert code == 130
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    assert load_checkpoint(os.path.join(str(tmp_path / "resumed_seed42"), "checkpoint_last.pth"))["epoch"] == 1
    code, resumed = run(tmp_path, "resumed", resume="auto")
    assert code == 0

    a = load_checkpoint(os.path.join(full, "checkpoint_last.pth"))
    b = load_checkpoint(os.path.join(resumed, "checkpoint_last.pth"))
    assert a["epoch"] == b["epoch"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), (name, (tensor - b["model"][name]).abs().max().item())
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"]
    log_a, log_b = without_timing(read_log(full)), without_timing(read_log(resumed))
    assert [r["epoch"] for r in log_a] == [0, 1, 2] and log_a == log_b  # epoch 0: before training
    assert log_a[2]["loss"] < log_a[1]["loss"]
    for key in ("loss", "loss_contrastive", "loss_soft", "tau", "tau_s", "tau_t", "lr", "epoch_seconds",
                "samples_per_second", "val_r_mean", "val_rsum", "test_txt_r1", "test_img_r10"):
        assert key in read_log(full)[2], key


def test_evaluation_reproduces_logged_val_metrics(tmp_path):
    code, run_dir = run(tmp_path, "evalrun")
    assert code == 0
    best = os.path.join(run_dir, "checkpoint_best.pth")
    epoch = load_checkpoint(best)["epoch"]
    (record,) = [r for r in read_log(run_dir) if r["epoch"] == epoch]
    logged = {k[4:]: v for k, v in record.items() if k.startswith("val_")}
    out = str(tmp_path / "metrics.json")
    assert evaluation.main(["--checkpoint", best, "--split", "val", "test", "--out", out]) == 0
    metrics = json.load(open(out))
    assert metrics["val"] == logged  # exactly, not approximately
    assert set(metrics) == {"val", "test"}
    # retrieval.py --eval on the same checkpoint agrees as well
    assert retrieval.main(["--config", EXAMPLE_CONFIG, "--eval", "--resume", best, "--opts",
                           *tiny_overrides(f"output_dir={tmp_path}/e", "eval.splits=[val]")]) == 0


@pytest.mark.parametrize("val, test, best_epoch", [((10, 20), (50, 5), 2), ((30, 20), (5, 50), 1)])
def test_best_checkpoint_is_selected_on_val_not_test(tmp_path, monkeypatch, val, test, best_epoch):
    scripted = iter([{"val": {"r_mean": v}, "test": {"r_mean": t}} for v, t in zip(val, test)])
    monkeypatch.setattr(trainer.Evaluator, "evaluate", lambda self, model, cfg, env: next(scripted))
    monkeypatch.setattr(session, "format_table", lambda results: "")
    code, run_dir = run(tmp_path, "select", "eval.eval_before_training=false")
    assert code == 0
    assert load_checkpoint(os.path.join(run_dir, "checkpoint_best.pth"))["epoch"] == best_epoch
    assert read_log(run_dir)[-1]["best_epoch"] == best_epoch


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from icsd.losses import Criterion

    real_loss, calls = Criterion.__call__, {"n": 0}
    steps_per_epoch = 300 // 32

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real_loss(*args, **kwargs)
        if calls["n"] > steps_per_epoch:  # from the first step of epoch 2 on
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Criterion, "__call__", poisoned)
    code, run_dir = run(tmp_path, "nan", "train.log_every=2")
    assert code == 1
    err = capsys.readouterr().err
    assert "error: non-finite loss (contrastive_i2t, " in err and "loss) in epoch 2 by step 2; stopping" in err
    state = load_checkpoint(os.path.join(run_dir, "checkpoint_last.pth"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert [r["epoch"] for r in read_log(run_dir)] == [0, 1]


def test_missing_resume_checkpoint_is_a_clear_error(tmp_path, capsys):
    code, _ = run(tmp_path, "x", resume=str(tmp_path / "missing.pth"))
    assert code == 1
    assert f"checkpoint not found: {tmp_path}/missing.pth" in capsys.readouterr().err


def test_paper_config_fails_fast_without_data(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    assert retrieval.main(["--config", "configs/vitb32/coco/icsd.yaml"]) == 1
    assert "data.root not found: datasets/coco" in capsys.readouterr().err
    assert retrieval.main(["--config", "configs/vitb32/coco/icsd.yaml", "--opts", "train.epohcs=1"]) == 1
    assert "did you mean 'epochs'" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_stops_with_its_path(tmp_path, capsys, workers):
    import shutil

    from conftest import EXAMPLE_DATA

    root = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATA, root, ignore=shutil.ignore_patterns("pics"))
    (root / "pics").mkdir()
    train_images = {os.path.basename(r["image_path"]) for r in json.load(open(root / "train.json"))}
    for name in os.listdir(os.path.join(EXAMPLE_DATA, "pics")):  # the evaluated splits' images are checked first
        if name in train_images:
            (root / "pics" / name).write_bytes(b"not a jpeg")
        else:
            os.symlink(os.path.join(EXAMPLE_DATA, "pics", name), root / "pics" / name)
    code, _ = run(tmp_path, "corrupt", f"data.root={root}", *ORIGINALS, f"data.num_workers={workers}")
    assert code == 1
    err = capsys.readouterr().err
    assert f"error: cannot read image {root}/pics/COCO_" in err and "Traceback" not in err


def test_run_folder_is_never_overwritten_and_resume_rewrites_later_epochs(tmp_path, capsys):
    code, run_dir = run(tmp_path, "twice", "train.save_every=1", "eval.splits=[val]")
    assert code == 0
    code, _ = run(tmp_path, "twice", "eval.splits=[val]")
    assert code == 1 and "already holds a run (checkpoint_best.pth, checkpoint_epoch1.pth, checkpoint_epoch2.pth, " \
        "checkpoint_last.pth): continue it with --resume auto" in \
        capsys.readouterr().err
    before = without_timing(read_log(run_dir))
    code, _ = run(tmp_path, "twice", "eval.splits=[val]", resume=os.path.join(run_dir, "checkpoint_epoch1.pth"))
    assert code == 0
    after = without_timing(read_log(run_dir))
    assert [r["epoch"] for r in after] == [0, 1, 2] and after == before  # epoch 2 redone, not appended


def test_eval_needs_a_checkpoint_that_fits(tmp_path, capsys):
    code, run_dir = run(tmp_path, "fit", "train.epochs=1", "eval.splits=[val]")
    assert code == 0
    argv = ["--config", EXAMPLE_CONFIG, "--eval", "--opts", *tiny_overrides(f"output_dir={tmp_path}/none")]
    assert retrieval.main(argv + ["--resume", "auto"]) == 1
    assert f"--eval --resume auto: no {tmp_path}/none_seed42/checkpoint_last.pth" in capsys.readouterr().err
    last = os.path.join(run_dir, "checkpoint_last.pth")
    assert evaluation.main(["--checkpoint", last, "--split", "val", "--opts", "model.pdm.enabled=false"]) == 1
    err = capsys.readouterr().err
    assert f"error: {last} does not fit the configured model (missing [image_head.0.bias" in err


@pytest.mark.parametrize("precision", ["amp_bf16", "amp_fp16"])
def test_mixed_precision_with_clipping_and_accumulation(tmp_path, precision):
    """The AMP paths (autocast on CPU; GradScaler for fp16) with gradient clipping and accumulation."""
    code, run_dir = run(tmp_path, precision, f"train.precision={precision}", "train.grad_clip=1.0",
                        "train.accum_steps=2", "train.batch_size=16", "train.epochs=1", "eval.splits=[val]",
                        "eval.eval_before_training=false")
    assert code == 0
    (record,) = read_log(run_dir)
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss", "loss_soft", "val_r_mean"))
    state = load_checkpoint(os.path.join(run_dir, "checkpoint_last.pth"))
    assert state["num_updates"] == 300 // 16 // 2  # one optimizer step per 2 micro-batches
    assert state["scaler"] != {} if precision == "amp_fp16" else state["scaler"] == {}
    assert 0.01 <= record["tau"] <= 0.10 and 0.10 <= record["tau_s"] <= 0.99


def test_the_log_reader_keeps_one_record_per_epoch(tmp_path):
    """The one log reader (icsd.runs.read_log): a later line for an epoch replaces an earlier one (a resumed
    run rewrote it), a line cut short by a crash is skipped."""
    from icsd.runs import read_log as read_run_log

    path = str(tmp_path / "log.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps({"epoch": e, "loss": e / 10}) + "\n" for e in (0, 1, 2, 1))
        f.write('{"epoch": 4, "lo')  # cut short by a crash
    assert read_run_log(path) == [{"epoch": 0, "loss": 0.0}, {"epoch": 1, "loss": 0.1}, {"epoch": 2, "loss": 0.2}]


def test_resume_in_amp_fp16_from_an_fp32_checkpoint(tmp_path):
    """The fp32 run's scaler state is empty: the fp16 run starts its GradScaler anew instead of failing."""
    common = ("train.epochs=2", "eval.splits=[val]", "eval.eval_before_training=false", "train.save_every=1")
    code, run_dir = run(tmp_path, "fp32", *common)
    assert code == 0
    code, resumed = run(tmp_path, "fp16", *common, "train.precision=amp_fp16",
                        resume=os.path.join(run_dir, "checkpoint_epoch1.pth"))
    assert code == 0
    state = load_checkpoint(os.path.join(resumed, "checkpoint_last.pth"))
    assert state["epoch"] == 2 and state["scaler"] != {}


def test_rank_sums_of_a_recovery_checkpoint_on_another_number_of_processes():
    """The epoch's loss sums saved per rank: kept per rank on the same number of processes; on another one,
    rank 0 takes their total and the others start from zero (the epoch means reduce over ranks)."""
    from icsd.distributed import DistEnv
    from icsd.train.session import _rank_sums

    saved = [[1.0, 2.0], [10.0, 20.0]]  # two ranks, two loss terms
    assert _rank_sums(saved, DistEnv(rank=1, world_size=2)) == [10.0, 20.0]
    assert _rank_sums(saved, DistEnv(rank=0, world_size=1)) == [11.0, 22.0]
    assert _rank_sums([[3.0, 4.0]], DistEnv(rank=0, world_size=4)) == [3.0, 4.0]
    assert _rank_sums([[3.0, 4.0]], DistEnv(rank=3, world_size=4)) == [0.0, 0.0]
    assert _rank_sums([[]], DistEnv(rank=0, world_size=2)) == []  # stopped before the first step


def test_resume_from_a_checkpoint_without_log_records_truncates_the_log(tmp_path):
    """A checkpoint written before the log records travelled inside it: the log is cut back to its epoch."""
    from icsd.checkpoint import load_checkpoint
    from icsd.files import write_atomic

    code, run_dir = run(tmp_path, "old", "train.epochs=1", "eval.splits=[val]")
    assert code == 0
    last = os.path.join(run_dir, "checkpoint_last.pth")
    state = load_checkpoint(last)
    del state["log"]
    write_atomic(last, lambda f: torch.save(state, f))  # not in place: the state is memory-mapped from it
    with open(os.path.join(run_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps({"epoch": 2, "stale": True}) + "\n")  # a later epoch the checkpoint never saw
    code, _ = run(tmp_path, "old", "train.epochs=2", "eval.splits=[val]", resume=last)
    assert code == 0
    log = read_log(run_dir)
    assert [r["epoch"] for r in log] == [0, 1, 2] and not any("stale" in r for r in log)
