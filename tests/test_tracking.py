"""Observability of a run nobody watches: progress lines when stdout is no terminal, TensorBoard scalars
equal to log.jsonl, a missing tracker named with its pip command before any work."""
from __future__ import annotations

import glob
import json
import os

import pytest

import retrieval
from icsd.train import tracking

from conftest import EXAMPLE_CONFIG, tiny_overrides


def run(tmp_path, *opts):
    out = str(tmp_path / "run")
    code = retrieval.main(["--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(
        f"output_dir={out}", "train.epochs=2", "eval.splits=[val]", "train.log_every=3", *opts)])
    return code, out + "_seed42"


def test_tensorboard_scalars_match_the_log_and_progress_lines_are_printed(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, run_dir = run(tmp_path, "train.report_to=[tensorboard]")
    assert code == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch 1/2 step ")]
    assert [line.split(" |")[0] for line in lines] == ["epoch 1/2 step 3/9", "epoch 1/2 step 6/9", "epoch 1/2 step 9/9"]
    for part in ("loss_contrastive ", "loss_soft ", "| lr ", " samples/s | data ", "% | mem ", " GB | eta "):
        assert part in lines[0], lines[0]
    log = {r["epoch"]: r for r in map(json.loads, open(os.path.join(run_dir, "log.jsonl")))}
    (events,) = glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
    acc = EventAccumulator(events)
    acc.Reload()
    for key in ("val/r_mean", "val/rsum", "epoch/loss", "epoch/tau", "epoch/lr"):
        values = {e.step: e.value for e in acc.Scalars(key)}
        flat = key.replace("/", "_") if key.startswith("val/") else key.split("/")[1]
        assert values == pytest.approx({epoch: log[epoch][flat] for epoch in (1, 2)}, rel=1e-6), key
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [3, 6, 9, 12, 15, 18]  # every train.log_every optimizer steps
    assert {"train/lr", "train/tau", "train/tau_s", "train/samples_per_second", "train/data_share"} <= \
        set(acc.Tags()["scalars"])


def test_missing_tracker_stops_at_start_with_the_pip_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(tracking.PACKAGES, "wandb", "wandb_not_installed_here")
    code, run_dir = run(tmp_path, "train.report_to=[wandb]")
    assert code == 1
    assert "train.report_to names wandb, which is not installed: pip install wandb_not_installed_here" in \
        capsys.readouterr().err
    assert not os.path.exists(run_dir)


def test_wandb_offline_mode_logs_with_no_network(tmp_path, monkeypatch):
    """WANDB_MODE=offline: the run is recorded under the run folder (``wandb sync`` uploads it later); its id
    is kept in the folder so a resumed run continues the same W&B run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    code, run_dir = run(tmp_path, "train.report_to=[wandb]", "train.epochs=1")
    assert code == 0
    run_id = open(os.path.join(run_dir, tracking.WANDB_ID_FILE)).read().strip()
    (record,) = glob.glob(os.path.join(run_dir, "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb"))
    assert os.path.getsize(record) > 0
