"""icsd.export / icsd.load_pretrained: same metrics as the checkpoint, light loading, clear errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import evaluation
from icsd.checkpoint import load_checkpoint
from icsd.pretrained import ExportError, load_pretrained
from icsd.tools import export

from conftest import REPO
from example_runs import example_runs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    runs = example_runs(tmp_path_factory)
    checkpoint = os.path.join(runs["icsd"][0], "checkpoint_best.pth")
    out = str(tmp_path_factory.mktemp("export") / "icsd")
    assert export.main([checkpoint, out]) == 0
    return checkpoint, out


def test_export_folder_gives_the_checkpoint_metrics_exactly(exported, tmp_path, capsys):
    checkpoint, folder = exported
    assert sorted(os.listdir(folder)) == ["config.yaml", "export.json", "model.safetensors"]
    info = json.load(open(os.path.join(folder, "export.json")))
    state = load_checkpoint(checkpoint)
    assert info["epoch"] == state["epoch"] and info["format_version"] == 1
    assert info["metrics"]["val_r_mean"] == state["best"]["score"]
    assert os.path.getsize(os.path.join(folder, "model.safetensors")) < os.path.getsize(checkpoint) / 2

    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    assert evaluation.main(["--checkpoint", checkpoint, "--split", "val", "test", "--out", a]) == 0
    assert evaluation.main(["--checkpoint", folder, "--split", "val", "test", "--out", b]) == 0
    assert json.load(open(a)) == json.load(open(b))

    model = load_pretrained(folder)
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state["model"])
    assert all(torch.equal(loaded[k], v) for k, v in state["model"].items())

    assert export.main([checkpoint, folder]) == 1  # never overwrites silently
    assert "already holds an export" in capsys.readouterr().err


def test_shared_and_non_contiguous_tensors_are_exported_as_plain_copies(tmp_path):
    from safetensors.torch import load_file, save_file

    base = torch.arange(12.0).reshape(3, 4)
    tied = {"encoder.weight": base, "decoder.weight": base, "transposed": base.t()}  # shared storage, a view
    with pytest.raises(RuntimeError):
        save_file(tied, str(tmp_path / "raw.safetensors"))
    save_file(export.plain_tensors(tied), str(tmp_path / "plain.safetensors"))
    loaded = load_file(str(tmp_path / "plain.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in tied.items())


def test_loads_in_a_fresh_process_without_training_code(exported):
    _, folder = exported
    code = ("import sys, icsd; light = 'torch' not in sys.modules; m = icsd.load_pretrained(sys.argv[1]); "
            "bad = {m for m in sys.modules if m.startswith(('icsd.train', 'icsd.tools'))}; "
            "print(light, type(m).__name__, sorted(bad))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "True ICSDModel []"


def broken_copy(folder, tmp_path, name, damage):
    copy = shutil.copytree(folder, str(tmp_path / name))
    damage(copy)
    return copy


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def scramble_header(path):
    with open(path, "r+b") as f:
        f.write(b"\xff" * 16)


def disable_pdm(folder):
    path = os.path.join(folder, "config.yaml")
    config = yaml.safe_load(open(path))
    config["model"]["pdm"]["enabled"] = False
    yaml.safe_dump(config, open(path, "w"))


@pytest.mark.parametrize("name, damage, message", [
    ("no_config", lambda d: os.remove(os.path.join(d, "config.yaml")), "config.yaml is missing"),
    ("no_info", lambda d: os.remove(os.path.join(d, "export.json")), "export.json is missing (interrupted export?)"),
    ("no_weights", lambda d: os.remove(os.path.join(d, "model.safetensors")), "model.safetensors is missing"),
    ("truncated", lambda d: truncate(os.path.join(d, "model.safetensors")), "(truncated or corrupted copy)"),
    ("scrambled", lambda d: scramble_header(os.path.join(d, "model.safetensors")),
     "model.safetensors is not a readable safetensors file"),
    ("mismatch", disable_pdm, "the weights do not fit its config.yaml"),
])
def test_broken_export_is_one_clear_error(exported, tmp_path, capsys, name, damage, message):
    folder = broken_copy(exported[1], tmp_path, name, damage)
    with pytest.raises(ExportError) as info:
        load_pretrained(folder)
    assert str(info.value).startswith(folder) or folder in str(info.value)
    assert message in str(info.value)
    if name != "mismatch":  # evaluation.py reads the same folder: the same one-line error
        assert evaluation.main(["--checkpoint", folder, "--split", "val"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
