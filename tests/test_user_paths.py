"""What users hand the commands: paths of the wrong kind (a file where a folder is needed, or the reverse) get
one message naming the key or flag and the path, with nothing written; JSON and YAML files load as editors
save them (byte-order mark, CRLF); open_clip's "initialized randomly" warning never shows where trained
weights are loaded right after."""
from __future__ import annotations

import json
import logging
import os

import pytest
import yaml

import evaluation
import retrieval
from icsd.config import load_config
from icsd.data.annotations import load_split
from icsd.runs import read_eval_json, read_run
from icsd.tools import export, plot, show

from conftest import EXAMPLE_CONFIG, EXAMPLE_DATA, tiny_overrides

EDITOR = b"\xef\xbb\xbf"  # UTF-8 byte-order mark, as Notepad writes it


def files_under(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("trained") / "run")
    assert retrieval.main(["--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(
        f"output_dir={out}", "train.epochs=1", "eval.splits=[val]", "eval.eval_before_training=false")]) == 0
    return os.path.join(out + "_seed42", "checkpoint_last.pth")


def train(tmp_path, *opts, resume=None) -> int:
    argv = ["--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(f"output_dir={tmp_path}/out/run", *opts)]
    return retrieval.main(argv + (["--resume", resume] if resume else []))


@pytest.mark.parametrize("case", ["output_dir is a file", "output_dir under a file", "data.root is a file",
                                  "data.image_root is a file", "--resume is a folder"])
def test_training_paths_of_the_wrong_kind(tmp_path, capsys, case):
    (tmp_path / "out").mkdir()
    (tmp_path / "a_file").write_text("x")
    opts, resume = [], None
    if case == "output_dir is a file":
        (tmp_path / "out" / "run_seed42").write_text("x")
        message = f"error: output_dir: {tmp_path}/out/run_seed42 is a file, not a folder"
    elif case == "output_dir under a file":
        opts = [f"output_dir={tmp_path}/a_file/run"]
        message = f"error: output_dir: cannot create the folder {tmp_path}/a_file/run_seed42: {tmp_path}/a_file is a " \
                  f"file, not a folder"
    elif case == "data.root is a file":
        opts = [f"data.root={tmp_path}/a_file"]
        message = f"error: data.root: {tmp_path}/a_file is a file, not a folder"
    elif case == "data.image_root is a file":
        opts = [f"data.image_root={tmp_path}/a_file", "data.pixel_cache=null"]
        message = f"error: data.image_root: the prepared image cache {tmp_path}/a_file is a file, not a folder"
    else:
        resume = str(tmp_path / "out")
        message = f"error: --resume: {tmp_path}/out is a folder, not a checkpoint"
    before = files_under(tmp_path)
    assert train(tmp_path, *opts, resume=resume) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1].startswith(message), captured.err
    assert captured.err.count("error: ") == 1 and "Traceback" not in captured.err
    assert files_under(tmp_path) == before and sorted(os.listdir(tmp_path / "out")) == sorted(
        ["run_seed42"] if case == "output_dir is a file" else [])


def test_tool_paths_of_the_wrong_kind(tmp_path, capsys, checkpoint):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    folder, a_file = str(tmp_path / "folder"), str(tmp_path / "a_file")
    cases = [
        (evaluation.main, ["--checkpoint", folder], f"--checkpoint: {folder} is a folder but not an ICSD export"),
        (evaluation.main, ["--checkpoint", checkpoint, "--out", folder], f"--out: {folder} is a folder, not a file"),
        (export.main, [folder, f"{tmp_path}/export"], f"CKPT: {folder} is a folder but not an ICSD export"),
        (export.main, [checkpoint, a_file], f"OUT_DIR: {a_file} is a file, not a folder"),
        (plot.main, [os.path.dirname(checkpoint), "--out", folder], f"--out: {folder} is a folder, not a file"),
        (show.main, [checkpoint, "--out", f"{folder}.png"], f"--out: {folder}.png is a folder, not a file"),
        (show.main, [folder, "--out", f"{tmp_path}/s.png"], f"CKPT_OR_EXPORT: {folder} is a folder but not an ICSD"),
    ]
    os.makedirs(f"{folder}.png")
    for main, argv, message in cases:
        before = files_under(tmp_path)
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith(f"error: {message}"), (argv, err)
        assert "Traceback" not in err and files_under(tmp_path) == before


def test_json_and_yaml_as_editors_save_them(tmp_path):
    """UTF-8 with a byte-order mark and CRLF line ends: a config, an annotation file, a run folder's config and
    an evaluation JSON."""
    config = tmp_path / "edited.yaml"
    config.write_bytes(EDITOR + b"_base_: " + EXAMPLE_CONFIG.encode() + b"\r\ntrain:\r\n  epochs: 3\r\n")
    assert load_config(str(config)).train.epochs == 3
    records = json.load(open(os.path.join(EXAMPLE_DATA, "val.json")))
    annotation = tmp_path / "val.json"
    annotation.write_bytes(EDITOR + json.dumps(records, indent=1).replace("\n", "\r\n").encode())
    split = load_split("val", str(annotation), EXAMPLE_DATA)
    assert split.num_captions == len(records)
    run = tmp_path / "run_seed1"
    run.mkdir()
    (run / "config.yaml").write_bytes(EDITOR + yaml.safe_dump({"train": {"epochs": 2}}).replace("\n", "\r\n").encode())
    (run / "log.jsonl").write_bytes(EDITOR + b'{"epoch": 1, "val_r_mean": 5.0}\r\n')
    (run / "eval_best.json").write_bytes(EDITOR + b'{"test": {"rsum": 100.0}}\r\n')
    read = read_run(str(run))
    assert read.config == {"train": {"epochs": 2}} and read.records == [{"epoch": 1, "val_r_mean": 5.0}]
    assert read_eval_json(str(run / "eval_best.json")) == {"test": {"rsum": 100.0}}


def test_no_random_init_warning_where_weights_are_loaded(checkpoint, caplog, capsys):
    """open_clip warns "Model initialized randomly" when it builds a model without weights, also right before
    trained weights are loaded into it: evaluating a checkpoint shows no such warning; a run with
    model.pretrained null says once, in the project's words, that it starts from a random initialisation."""
    with caplog.at_level(logging.WARNING):
        assert evaluation.main(["--checkpoint", checkpoint, "--split", "val"]) == 0
    shown = capsys.readouterr()
    assert "initialized randomly" not in caplog.text + shown.out + shown.err
    assert "random initialisation" not in shown.out + shown.err
    assert retrieval.main(["--config", EXAMPLE_CONFIG, "--eval", "--opts", *tiny_overrides("eval.splits=[val]")]) == 0
    shown = capsys.readouterr()
    assert shown.out.count("model.pretrained is null: icsd-tiny starts from a random initialisation") == 1
