"""icsd.report on short real runs: numbers equal to those computed from the logs and evaluation's JSON."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil

import pytest
import yaml

from icsd.runs import ReportError, load_runs
from icsd.tools import report

from example_runs import example_runs, read_log

METRICS = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "rsum")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return example_runs(tmp_path_factory)


def best_record(run_dir):
    log = read_log(run_dir)
    best = log[-1]["best_epoch"]
    return next(r for r in log if r["epoch"] == best)


def expected_stats(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def markdown_row(text, label):
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.mark.trains  # the example runs
def test_table_equals_the_logs_and_the_eval_json(runs, capsys):
    with open(runs["eval_json"]) as f:
        evaluated = json.load(f)
    # evaluation.py's JSON of checkpoint_best is the best epoch's log line, exactly
    assert evaluated["test"] == {k[5:]: v for k, v in best_record(runs["icsd"][0]).items() if k.startswith("test_")}

    rows = {r.name: r for r in report.build_rows(load_runs([runs["root"]]), baseline="contrastive")}
    assert set(rows) == {"contrastive", "icsd"} and all(r.finished for r in rows.values())
    for name in ("contrastive", "icsd"):
        records = [best_record(d) for d in runs[name]]
        # icsd seed 1 has an eval_best.json: its test metrics come from it
        tests = [evaluated["test"] if d == runs["icsd"][0] else {k[5:]: v for k, v in r.items()
                                                                   if k.startswith("test_")}
                 for d, r in zip(runs[name], records)]
        row = rows[name]
        assert row.seeds == [1, 2] and [r.best_epoch for r in row.runs] == [r["epoch"] for r in records]
        for metric in METRICS:
            mean, std = expected_stats([t[metric] for t in tests])
            assert row.test[metric].mean == pytest.approx(mean, abs=1e-9)
            assert row.test[metric].std == pytest.approx(std, abs=1e-9)
            assert row.test[metric].n == 2
            mean, std = expected_stats([r[f"val_{metric}"] for r in records])
            assert row.val[metric].mean == pytest.approx(mean, abs=1e-9)
            assert row.val[metric].std == pytest.approx(std, abs=1e-9)
    assert rows["icsd"].delta["rsum"] == pytest.approx(rows["icsd"].test["rsum"].mean
                                                       - rows["contrastive"].test["rsum"].mean)
    assert rows["contrastive"].delta["rsum"] == 0.0

    # The Markdown cells show those numbers; the JSON output holds them unrounded
    assert report.main([runs["root"], "--baseline", "contrastive"]) == 0
    text = capsys.readouterr().out
    cells = markdown_row(text, "icsd")
    rsum = rows["icsd"].test["rsum"]
    assert cells[1] == "1, 2 (n=2)" and f"{rsum.mean:.2f} ± {rsum.std:.2f}" == cells[3 + 2 + 7]
    assert cells[-2] == f"{rows['icsd'].delta['rsum']:+.2f}"
    assert report.main([os.path.join(runs["root"], "*_seed*"), "--json", "--baseline", "contrastive"]) == 0
    data = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert data["icsd"]["test"]["rsum"] == {"mean": rsum.mean, "std": rsum.std, "n": 2}
    assert data["icsd"]["anchors"] == []  # the tiny model on dataset_example has no published anchor


@pytest.mark.trains  # the example runs
def test_eval_json_wins_over_the_log(runs, tmp_path):
    run = shutil.copytree(runs["contrastive"][0], str(tmp_path / "contrastive_seed1"))
    with open(os.path.join(run, "eval_best.json"), "w") as f:
        json.dump({"test": {m: 1.0 for m in METRICS} | {"rsum": 6.0, "1k_rsum": 7.0}}, f)
    (row,) = report.build_rows(load_runs([run]))
    assert row.test["rsum"].mean == 6.0 and row.test["1k_rsum"].mean == 7.0
    assert row.val["rsum"].mean == best_record(run)["val_rsum"]  # val still from the log
    assert "1K RSUM" in report.to_markdown([row])


@pytest.mark.trains  # the example runs
def test_single_seed_shows_no_std(runs, capsys):
    assert report.main([runs["icsd"][0]]) == 0
    cells = markdown_row(capsys.readouterr().out, "icsd")
    assert cells[1] == "1 (n=1)" and "±" not in "".join(cells) and "nan" not in "".join(cells).lower()
    assert report.main([runs["icsd"][0], "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["test"]["rsum"]["std"] is None and row["test"]["rsum"]["n"] == 1
    assert report.main([runs["icsd"][0], "--csv"]) == 0
    (record,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert record["test_rsum_std"] == ""
    assert float(record["test_rsum_mean"]) == best_record(runs["icsd"][0])["test_rsum"]
    assert report.main([runs["icsd"][0], "--json", "--split-val", "test"]) == 0  # another split in the val columns
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["val"]["rsum"]["mean"] == best_record(runs["icsd"][0])["test_rsum"]


@pytest.mark.trains  # the example runs
def test_unfinished_run_is_marked_and_not_averaged(runs, tmp_path, capsys):
    root = str(tmp_path / "runs")
    for run in runs["icsd"]:
        shutil.copytree(run, os.path.join(root, os.path.basename(run)))
    running = shutil.copytree(runs["icsd"][1], os.path.join(root, "icsd_seed3"))
    config_path = os.path.join(running, "config.yaml")
    config = yaml.safe_load(open(config_path))
    config["train"]["epochs"] = 5
    yaml.safe_dump(config, open(config_path, "w"))
    os.remove(os.path.join(root, "icsd_seed1", "eval_best.json"))

    rows = report.build_rows(load_runs([root]))
    assert [(r.finished, r.seeds) for r in rows] == [(True, [1, 2]), (False, [3])]
    finished = [best_record(os.path.join(root, f"icsd_seed{s}"))["test_rsum"] for s in (1, 2)]
    assert rows[0].test["rsum"].mean == pytest.approx(sum(finished) / 2)  # seed 3 not mixed in
    assert report.main([root]) == 0
    out = capsys.readouterr().out
    assert "| icsd seed 3 (unfinished, epoch 2/5) | 3 (n=1) |" in out and "| icsd | 1, 2 (n=2) |" in out


def write_run(folder, clip, root, log):
    os.makedirs(folder)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump({"model": {"clip": clip}, "data": {"root": root}, "train": {"epochs": len(log)}}, f)
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)


def test_anchors_beside_runs_of_the_same_method_backbone_and_data(tmp_path):
    """Each ladder row shows the published numbers of its method (its config's name) with the same backbone and
    test split; the notes give each one's setting; rows without one (ICSD itself, another backbone) show none."""
    log = [{"epoch": 1, "val_r_mean": 50.0, "test_rsum": 400.0, "best_epoch": 1}]
    write_run(str(tmp_path / "coco" / "contrastive_seed1"), "ViT-B-32-quickgelu", "datasets/coco", log)
    write_run(str(tmp_path / "flickr" / "cusa_seed1"), "ViT-L-14-336-quickgelu", "datasets/f30k_flickr", log)
    write_run(str(tmp_path / "coco" / "clip_finetune_seed1"), "ViT-B-32-quickgelu", "datasets/coco", log)
    write_run(str(tmp_path / "coco" / "icsd_seed1"), "ViT-B-32-quickgelu", "datasets/coco", log)
    write_run(str(tmp_path / "other" / "contrastive_seed1"), "RN50", "datasets/coco", log)
    rows = {r.name: r for r in report.build_rows(load_runs([str(tmp_path / "*" / "*")]))}
    rsums = {name: [a.rsum for a in row.anchors] for name, row in rows.items()}
    assert rsums == {"coco/contrastive": [422.6], "flickr/cusa": [560.2], "coco/clip_finetune": [444.9, 436.9, 454.1,
                                                                                                   455.4],
                     "coco/icsd": [], "other/contrastive": []}
    text = report.to_markdown(list(rows.values()))  # rows in folder order: clip_finetune's anchors are [1]..[4]
    assert "| 444.9 [1], 436.9 [2], 454.1 [3], 455.4 [4] |" in text and "| 422.6 [5] |" in text
    assert "[1] plain fine-tune (CLIP_ITM): RSUM 444.9, ViT-B/32, COCO 5K test; OpenAI CLIP, CLIP's own projections, " \
           "lr 1e-5, batch 256, 5 epochs" in text


@pytest.mark.trains  # the example runs
def test_user_errors_are_one_line(tmp_path, runs, capsys):
    os.makedirs(tmp_path / "started_seed1")
    (tmp_path / "started_seed1" / "config.yaml").write_text("train: {epochs: 2}\n")
    shutil.copytree(runs["icsd"][0], str(tmp_path / "icsd_seed1"))
    assert report.main([str(tmp_path)]) == 0
    assert f"skipped {tmp_path / 'started_seed1'}: no log.jsonl" in capsys.readouterr().err
    assert report.main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == f"error: not a folder: {tmp_path / 'nowhere'}\n"
    assert report.main([str(tmp_path), "--baseline", "contrastive"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("skipped ") and len(err) == 2
    assert err[1] == "error: --baseline contrastive: no finished run group of that name (groups: icsd)"
    with pytest.raises(ReportError, match="no run folder with a log.jsonl"):
        load_runs([str(tmp_path / "started_seed1")])
    capsys.readouterr()
    (tmp_path / "icsd_seed1" / "config.yaml").write_text("train: [epochs\n")
    assert report.main([str(tmp_path / "icsd_seed1")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'icsd_seed1' / 'config.yaml'}: not valid YAML")
