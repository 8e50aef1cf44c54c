"""The codebase's shape: packaging, module boundaries, entry points, logging to out.log, --print-config."""
from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys

import pytest
import yaml

import retrieval
from icsd.config import load_config

from conftest import EXAMPLE_CONFIG, REPO, load_dataset_script, tiny_overrides

DATASET_SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "datasets", "*.py")))


def project_python_files(*, include_tests: bool = False) -> list[str]:
    files = []
    for folder in ("icsd", "datasets", "dataset_example", "bench", "tests"):
        if folder == "tests" and not include_tests:
            continue
        files += glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True)
    return sorted(files + glob.glob(os.path.join(REPO, "*.py")))


def imported_modules(path: str) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_sys_path_manipulation_outside_tests():
    offenders = [p for p in project_python_files() if "sys.path" in open(p).read()]
    assert offenders == []


def test_data_never_imports_the_preparation_package():
    for path in glob.glob(os.path.join(REPO, "icsd", "data", "*.py")):
        assert not {m for m in imported_modules(path) if m.startswith("icsd.prep")}, path


def test_only_icsd_models_builds_the_model():
    """Everything else calls icsd.models (build_model, build_model_for); nothing constructs one itself."""
    pattern = re.compile(r"\bICSDModel\(|open_clip\.create_model")
    outside = [p for p in project_python_files() if f"{os.sep}icsd{os.sep}models{os.sep}" not in p
               and pattern.search(open(p).read())]
    assert outside == []


def test_icsd_imports_from_another_folder_and_prep_runs_as_a_module(tmp_path):
    """The package is installed (pip install -e . by make): it imports with no path set up."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", "import icsd, icsd.tools.prep.__main__; print(icsd.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == os.path.join(REPO, "icsd", "__init__.py")
    out = subprocess.run([sys.executable, "-m", "icsd.prep", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "karpathy" in out.stdout and "extract-image" in out.stdout, out.stderr


def test_a_tool_run_as_a_module_shows_its_own_messages(tmp_path):
    """``python -m icsd.ablate``: the module logs as ``__main__``, which must reach the console too."""
    config = os.path.join(REPO, "configs", "example", "icsd.yaml")
    out = subprocess.run([sys.executable, "-m", "icsd.ablate", "--configs", config, "--dry-run", "--opts",
                          f"output_dir={tmp_path}/run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"[1/1] {tmp_path}/run_seed42: would run: " in out.stdout, out.stderr


@pytest.mark.parametrize("script", DATASET_SCRIPTS)
def test_every_dataset_script_and_prep_command_has_help(script, capsys):
    from icsd.tools.prep.__main__ import COMMANDS, main

    module = load_dataset_script(script)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    command = re.search(r"python -m icsd\.prep ([a-z-]+)", module.__doc__).group(1)
    assert command in COMMANDS and f"python -m icsd.prep {command}" in usage
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out == usage


def test_requirements_match_the_package_metadata():
    import tomllib

    project = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["teachers"]
    listed = [line.strip() for line in open(os.path.join(REPO, "requirements.txt"))
              if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(declared)
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in open(os.path.join(REPO, "constraints.txt"))
              if "==" in line}
    assert {"torch", "torchvision", "open-clip-torch", "timm", "sentence-transformers", "numpy"} <= pinned


def test_print_config_loads_back_as_the_same_config(tmp_path, capsys):
    opts = ["train.epochs=3", "loss.soft_label.tau_max=0.8", "loss.soft_label.shared_tau=false"]
    assert retrieval.main(["--config", os.path.join(REPO, "configs/vitb32/coco/isf.yaml"), "--print-config",
                           "--seed", "7", "--opts", *opts]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    expected = load_config(os.path.join(REPO, "configs/vitb32/coco/isf.yaml"), [*opts, "seed=7"])
    assert load_config(str(tmp_path / "printed.yaml")) == expected
    assert yaml.safe_load(printed)["loss"]["soft_label"]["tau_max"] == 0.8


def test_help_points_to_the_key_table(capsys):
    with pytest.raises(SystemExit):
        retrieval.main(["--help"])
    assert 'README.md, section "Config reference"' in capsys.readouterr().out


def test_out_log_holds_what_rank_0_printed(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert retrieval.main(["--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(
        f"output_dir={out}", "train.epochs=1", "eval.splits=[val]")]) == 0
    captured = capsys.readouterr()
    shown = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    logged = open(os.path.join(out + "_seed42", "out.log")).read()
    # out.log lines are "<date> <time> <LEVEL> <message>"; a message may span lines (the tables)
    messages = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+ ", "", logged, flags=re.M).splitlines()
    assert "epoch 1/1  loss " in logged and "done: " in logged
    assert [m for m in messages if m.strip()] == [line for line in shown if line in messages]
    table = [line for line in shown if line.startswith("val ")]
    assert table and all(line in messages for line in table)
