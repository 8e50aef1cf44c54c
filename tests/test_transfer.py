"""Transfer evaluation (``eval.extra``): another dataset evaluated every epoch and by evaluation.py, its
metrics prefixed by its name in log.jsonl, the trackers and the report; selection stays on the main val split."""
from __future__ import annotations

import glob
import json
import os

import evaluation
import retrieval
from icsd.tools import report

from conftest import EXAMPLE_CONFIG, EXAMPLE_DATA, tiny_overrides

# dataset_example's test split stands in for the other dataset (Flickr30K 1K test for a COCO-trained model)
EXTRA = f"eval.extra=[{{name: flickr, root: {EXAMPLE_DATA}, annotation: '{{split}}.json', split: test}}]"


def test_an_extra_dataset_is_evaluated_every_epoch_and_reported(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert retrieval.main(["--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(
        f"output_dir={out}", "train.epochs=2", "eval.splits=[val, test]", "eval.eval_before_training=false",
        "train.report_to=[tensorboard]", EXTRA)]) == 0
    run_dir = out + "_seed42"
    records = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    for record in records:
        assert {"flickr_rsum", "flickr_r_mean", "flickr_txt_r1", "flickr_img_r10"} <= set(record)
        # the same images and captions as the main test split: the same metrics, under the extra's name
        assert record["flickr_rsum"] == record["test_rsum"]
    assert records[-1]["best_epoch"] == max(records, key=lambda r: r["val_r_mean"])["epoch"]  # selected on val
    shown = capsys.readouterr().out
    assert "\nflickr " in shown  # its row in the epoch's table

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    assert {"flickr/rsum", "flickr/r_mean"} <= set(accumulator.Tags()["scalars"])

    metrics = str(tmp_path / "metrics.json")
    assert evaluation.main(["--checkpoint", os.path.join(run_dir, "checkpoint_best.pth"), "--split", "val",
                            "--out", metrics]) == 0
    assert set(json.load(open(metrics))) == {"val", "flickr"}

    text = report.report([run_dir])
    assert "flickr r_mean" in text and "flickr RSUM" in text
    assert f"{records[-1]['flickr_rsum']:.2f}" in text or any(f"{r['flickr_rsum']:.2f}" in text for r in records)
