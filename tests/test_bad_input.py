"""Every bad input of a long run stops before the first step (docs/data.md), naming the culprit, in
seconds, with no checkpoint or log created or changed; an unreadable training image met mid-epoch keeps the
finished steps in a recovery checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import torch

import retrieval
from icsd.checkpoint import load_checkpoint
from icsd.config import load_config

from conftest import EXAMPLE_CONFIG, EXAMPLE_DATA, ORIGINALS, tiny_overrides


@pytest.fixture
def data(tmp_path):
    """A copy of dataset_example that a test may break (images linked, not copied, unless replaced)."""
    root = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATA, root, ignore=shutil.ignore_patterns("pics"))
    (root / "pics").mkdir()
    for name in os.listdir(os.path.join(EXAMPLE_DATA, "pics")):
        os.symlink(os.path.join(EXAMPLE_DATA, "pics", name), root / "pics" / name)
    return root


def truncate(path) -> None:
    """An image that exists, opens, and does not decode: the first half of a JPEG."""
    blob = open(os.path.realpath(path), "rb").read()
    os.remove(path)
    open(path, "wb").write(blob[:len(blob) // 2])


def train(tmp_path, root, *opts, resume=None) -> tuple[int, str, float]:
    """A short run on the (possibly broken) copy ``root``, reading its original images."""
    out = str(tmp_path / "run")
    argv = ["--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(
        f"data.root={root}", *ORIGINALS, f"output_dir={out}", "train.epochs=1", "eval.splits=[val]",
        "eval.eval_before_training=false", *opts)] + (["--resume", resume] if resume else [])
    start = time.perf_counter()
    code = retrieval.main(argv)
    return code, out + "_seed42", time.perf_counter() - start


def assert_failed_before_training(code: int, run_dir: str, seconds: float, err: str, *culprits: str) -> None:
    assert code == 1
    for culprit in culprits:
        assert culprit in err, err
    assert seconds < 30
    assert not os.path.exists(os.path.join(run_dir, "checkpoint_last.pth"))
    assert not os.path.exists(os.path.join(run_dir, "log.jsonl"))


def test_truncated_val_image_stops_before_the_first_step(tmp_path, data, capsys):
    val_paths = {os.path.basename(r["image_path"]) for r in json.load(open(data / "val.json"))}
    bad = data / "pics" / sorted(val_paths)[0]
    truncate(bad)
    code, run_dir, seconds = train(tmp_path, data)
    assert_failed_before_training(code, run_dir, seconds, capsys.readouterr().err,
                                  "1 image(s) of the evaluated splits cannot be decoded",
                                  f"val: cannot read image {bad}")


def test_check_data_lists_every_unreadable_image_with_counts(tmp_path, data, capsys):
    names = sorted(os.listdir(data / "pics"))
    for name in names[:3]:
        truncate(data / "pics" / name)
    code = retrieval.main(["--config", EXAMPLE_CONFIG, "--check-data", "--opts", *tiny_overrides(
        f"data.root={data}", *ORIGINALS, "eval.splits=[val, test]", "data.num_workers=2")])
    out = capsys.readouterr()
    assert code == 1 and "error: 3 unreadable image(s) in the splits train, val, test" in out.err
    for name in names[:3]:
        assert f"cannot read image {data}/pics/{name}" in out.out
    assert "train: 60 images, 300 captions" in out.out and "unreadable image(s)" in out.out


def test_check_data_reads_the_training_images_from_the_prepared_cache(tmp_path, data, capsys):
    from icsd.data.build import load_data_split
    from icsd.tools.prep.resize import resize_images

    train = load_data_split(load_config(EXAMPLE_CONFIG, tiny_overrides(f"data.root={data}")).data, "train")
    cache = tmp_path / "cache"
    resize_images([(p, os.path.relpath(p, data)) for p in train.image_paths], str(cache), str(data), 64)
    cached = cache / os.path.relpath(train.image_paths[0], data)
    truncate(cached)
    code = retrieval.main(["--config", EXAMPLE_CONFIG, "--check-data", "--opts", *tiny_overrides(
        f"data.root={data}", f"data.image_root={cache}", "data.pixel_cache=null", "eval.splits=[val]")])
    out = capsys.readouterr()
    assert code == 1 and "error: 1 unreadable image(s) in the splits train, val" in out.err
    assert f"train: cannot read image {cached}" in out.out


def test_truncated_train_image_mid_epoch_keeps_the_finished_steps(tmp_path, data, capsys):
    from torch.utils.data import DistributedSampler

    code, run_dir, _ = train(tmp_path, data)
    assert code == 0
    records = json.load(open(data / "train.json"))
    # Epoch 2's order (seed 42, batch 32, one process): an image first needed by a batch after step 2
    sampler = DistributedSampler(range(len(records)), num_replicas=1, rank=0, shuffle=True, seed=42, drop_last=True)
    sampler.set_epoch(2)
    first_step = {}
    for position, record in enumerate(sampler):
        first_step.setdefault(records[record]["image_path"], position // 32)
    image, step = next((image, step) for image, step in first_step.items() if 2 <= step < 9)
    bad = os.path.normpath(os.path.join(str(data), image))
    truncate(bad)
    code, _, _ = train(tmp_path, data, "train.epochs=2", resume="auto")
    out = capsys.readouterr()
    assert code == 1 and f"error: cannot read image {bad}" in out.err
    state = load_checkpoint(os.path.join(run_dir, "checkpoint_last.pth"))
    assert state["epoch"] == 1 and state["position"]["epoch"] == 2 and state["position"]["update"] == step
    assert f"stopped in epoch 2 at step {step}/9 on an unreadable training image" in out.out
    assert [json.loads(line)["epoch"] for line in open(os.path.join(run_dir, "log.jsonl"))] == [1]
    os.remove(bad)
    os.symlink(os.path.join(EXAMPLE_DATA, image), bad)  # fixed: the run continues
    code, _, _ = train(tmp_path, data, "train.epochs=2", resume="auto")
    assert code == 0 and load_checkpoint(os.path.join(run_dir, "checkpoint_last.pth"))["epoch"] == 2


def write_matrix_with(path, row: int, value: float) -> str:
    matrix = np.load(path).astype(np.float32)
    matrix[row, 3] = value
    np.save(path, matrix.astype(np.float32))
    return json.load(open(str(path) + ".meta.json")).get("ids", [None] * (row + 1))[row]


@pytest.mark.parametrize("value, problem", [(float("nan"), "is not finite"), (float("inf"), "is not finite"),
                                            (1e6, "has a value beyond float16's range (|x| = 1e+06 > 65504)")])
def test_bad_teacher_feature_in_the_matrix_layout_is_named_at_load(tmp_path, data, capsys, value, problem):
    image_id = write_matrix_with(data / "train_unicom.npy", 7, value)
    code, run_dir, seconds = train(tmp_path, data)
    assert_failed_before_training(code, run_dir, seconds, capsys.readouterr().err,
                                  f"{data}/train_unicom.npy: the feature of image_id {image_id!r} (row 7) {problem}")


def test_bad_teacher_feature_in_the_released_layout_is_named_and_its_size_said_once(tmp_path, data, capsys):
    matrix = np.load(data / "train_unicom.npy").astype(np.float32)
    ids = json.load(open(data / "train_unicom.npy.meta.json"))["ids"]
    released = {image_id: matrix[i][None] for i, image_id in enumerate(ids)}
    released[ids[5]][0, 2] = np.nan
    os.remove(data / "train_unicom.npy.meta.json")
    np.save(data / "train_unicom.npy", released, allow_pickle=True)
    code, run_dir, seconds = train(tmp_path, data)
    err = capsys.readouterr().err
    assert_failed_before_training(code, run_dir, seconds, err,
                                  f"the feature of image_id {ids[5]!r} is not finite")
    assert err.count("is a pickled dict: every process unpickles it whole") == 1
    assert f"python -m icsd.prep convert-pickled {data}/train_unicom.npy {data}/train_unicom_mmap.npy" in err


def test_bad_text_feature_is_named_by_caption_record(tmp_path, data, capsys):
    write_matrix_with(data / "train_minilm.npy", 11, float("nan"))
    code, run_dir, seconds = train(tmp_path, data)
    assert_failed_before_training(code, run_dir, seconds, capsys.readouterr().err,
                                  f"{data}/train_minilm.npy: the feature of caption record 11 is not finite")


@pytest.mark.parametrize("caption", [None, 42, ["a", "dog"]])
def test_caption_that_is_not_a_string_names_the_record(tmp_path, data, capsys, caption):
    records = json.load(open(data / "train.json"))
    records[4]["caption"] = caption
    json.dump(records, open(data / "train.json", "w"))
    code, run_dir, seconds = train(tmp_path, data)
    assert_failed_before_training(code, run_dir, seconds, capsys.readouterr().err,
                                  f"{data}/train.json: record 4 (image_id {records[4]['image_id']!r}): the caption "
                                  f"must be a string, got {type(caption).__name__} {caption!r}")


def test_resume_from_a_file_that_is_no_checkpoint(tmp_path, data, capsys):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("these are not weights")
    code, run_dir, seconds = train(tmp_path, data, resume=str(bogus))
    assert_failed_before_training(code, run_dir, seconds, capsys.readouterr().err,
                                  f"error: {bogus} is not a PyTorch checkpoint (neither a torch.save zip archive")


def test_legacy_torch_checkpoint_loads_without_mmap(tmp_path):
    path = str(tmp_path / "legacy.pth")
    torch.save({"model": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))


def test_range_error_names_key_and_value(tmp_path, data, capsys):
    code, run_dir, seconds = train(tmp_path, data, "train.batch_size=-32")
    assert_failed_before_training(code, run_dir, seconds, capsys.readouterr().err,
                                  "train.batch_size = -32 must be >= 1")


def test_under_torchrun_one_ranks_error_is_shown_once_and_the_others_exit_quietly(tmp_path, data):
    """A train image that only rank 1 meets at the first step: rank 1 says which; rank 0 stops at the same
    step without a traceback of its own; no per-rank DDP warnings."""
    import subprocess
    import sys

    from torch.utils.data import DistributedSampler

    from conftest import REPO

    records = json.load(open(data / "train.json"))

    def first_batch(rank: int) -> list[int]:
        sampler = DistributedSampler(range(len(records)), num_replicas=2, rank=rank, shuffle=True, seed=42,
                                     drop_last=True)
        sampler.set_epoch(1)
        return list(sampler)[:16]

    rank0_images = {records[i]["image_path"] for i in first_batch(0)}
    image = next(records[i]["image_path"] for i in first_batch(1) if records[i]["image_path"] not in rank0_images)
    bad = os.path.normpath(os.path.join(str(data), image))
    truncate(bad)
    out = str(tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(REPO, "retrieval.py"), "--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(
                               f"data.root={data}", *ORIGINALS, f"output_dir={out}", "train.epochs=1",
                               "eval.splits=[val]", "train.batch_size=16", "eval.eval_before_training=false")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert output.count("error: cannot read image") == 1 and f"error: cannot read image {bad}" in output, output
    for ours in ("icsd", "retrieval.py"):  # torchrun reports its child's exit; no traceback of the project's code
        assert f'File "{os.path.join(REPO, ours)}' not in output, output
    assert "broadcast_buffers" not in output
    state = load_checkpoint(os.path.join(out + "_seed42", "checkpoint_last.pth"))
    assert state["position"] == {**state["position"], "epoch": 1, "update": 0}
