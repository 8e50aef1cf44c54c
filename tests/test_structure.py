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


TOOL_ENTRIES = {"report", "plot", "show", "export", "ablate", "prep"}  # icsd/<tool>.py: python -m icsd.<tool>


def layer(path: str) -> str:
    """library | train | tools, by where a module of icsd/ lives."""
    parts = os.path.relpath(path, os.path.join(REPO, "icsd")).split(os.sep)
    if parts[0] in ("train", "tools"):
        return parts[0]
    return "tools" if len(parts) == 1 and parts[0][:-3] in TOOL_ENTRIES else "library"


def test_the_library_never_imports_training_or_tool_code():
    """The import graph: the library (models, losses, metrics, config, data, evaluation, distributed set-up,
    mixed precision, the caches) imports neither icsd.train nor icsd.tools, lazily or not; training does not
    import the tools."""
    forbidden = {"library": ("icsd.train", "icsd.tools"), "train": ("icsd.tools",), "tools": ()}
    modules = glob.glob(os.path.join(REPO, "icsd", "**", "*.py"), recursive=True)
    assert {layer(p) for p in modules} == {"library", "train", "tools"}
    offenders = {os.path.relpath(p, REPO): sorted(m for m in imported_modules(p) if m.startswith(forbidden[layer(p)]))
                 for p in modules if forbidden[layer(p)]}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_no_function_of_the_package_is_long():
    """A reader takes in any function at a glance: none in icsd/ is over 60 lines."""
    long = []
    for path in glob.glob(os.path.join(REPO, "icsd", "**", "*.py"), recursive=True):
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append((os.path.relpath(path, REPO), node.name, node.end_lineno - node.lineno + 1))
    assert long == []


def test_ablate_runs_from_any_folder(tmp_path):
    """icsd.ablate runs the training entry point as ``python -m icsd.train``: found through the package, not
    by walking up from a folder, so it works from anywhere."""
    config = os.path.join(REPO, "configs", "example", "icsd.yaml")
    out = subprocess.run([sys.executable, "-m", "icsd.ablate", "--configs", config, "--dry-run", "--opts",
                          f"output_dir={tmp_path}/run"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"would run: {sys.executable} -m icsd.train --config {config} --resume auto" in out.stdout


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
    assert "docs/config.md" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(REPO, "docs", "config.md"))


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


def test_the_config_reference_page_is_generated_from_the_code(capsys):
    """docs/config.md is what the config dataclasses say now (regenerate: python -m icsd.tools.config_reference
    --out docs/config.md); every key of a resolved config is on it."""
    from icsd.tools import config_reference

    assert config_reference.main(["--check", os.path.join(REPO, "docs", "config.md")]) == 0, capsys.readouterr().err
    page = open(os.path.join(REPO, "docs", "config.md")).read()

    def keys(node, prefix=""):
        for key, value in node.items():
            yield from keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]

    from icsd.config import config_to_dict

    resolved = config_to_dict(load_config(os.path.join(REPO, "configs", "vitb32", "coco", "icsd.yaml")))
    assert [k for k in keys(resolved) if f"`{k}`" not in page] == []
