"""A checkpoint written by the code before the loss terms became plug-ins (``tests/data/legacy_v0``: a micro
model trained one epoch of two by commit 5a9096c, with what that code measured) still evaluates to the same
metrics and resumes to the same second epoch."""
from __future__ import annotations

import json
import os

import pytest
import torch

import evaluation
import retrieval

from conftest import EXAMPLE_CONFIG, EXAMPLE_DATA, ORIGINALS, REPO

LEGACY = os.path.join(REPO, "tests", "data", "legacy_v0")
CHECKPOINT = os.path.join(LEGACY, "checkpoint_epoch1.pth")
EXPECTED = json.load(open(os.path.join(LEGACY, "expected.json")))
AS_TRAINED = [f"data.root={EXAMPLE_DATA}", f"model.clip={LEGACY}/icsd-micro.json", "data.num_workers=0", *ORIGINALS]


@pytest.fixture(autouse=True)
def one_thread():
    """The expected numbers were computed with one torch thread: CPU kernels sum in another order with more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_it_evaluates_to_the_metrics_it_had(tmp_path):
    out = str(tmp_path / "metrics.json")
    assert evaluation.main(["--checkpoint", CHECKPOINT, "--split", "val", "test", "--out", out,
                            "--opts", *AS_TRAINED]) == 0
    assert json.load(open(out)) == EXPECTED["evaluation"]


def test_it_resumes_to_the_same_second_epoch(tmp_path):
    assert retrieval.main(["--config", EXAMPLE_CONFIG, "--resume", CHECKPOINT, "--opts", *AS_TRAINED,
                           "train.epochs=2", "train.save_every=1", "eval.splits=[val]",
                           "eval.eval_before_training=false", f"output_dir={tmp_path}/run"]) == 0
    records = [json.loads(line) for line in open(tmp_path / "run_seed42" / "log.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    expected = EXPECTED["epoch2_record"]
    got = {k: v for k, v in records[-1].items() if k in expected}
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)
