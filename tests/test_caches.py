"""The pixel and token caches (``data.pixel_cache``, ``data.token_cache``): batches read from them equal, bit for
bit, the ones decoded and tokenized from the originals (the tiny model's, ViT-B/32's and ViT-L/14@336's
transforms); evaluation gives the same metrics; a cache that no longer matches is refused, saying what changed;
a build is resumable, checks the free space and is not done twice by two runs at once."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import open_clip
import pytest
import torch
from torch.utils.data import DataLoader

import evaluation
from icsd import lease as lease_module
from icsd.data import caches as caches_module
from icsd.data.annotations import load_split
from icsd.data.build import load_data_split
from icsd.data.caches import (
    Rows,
    build_pixel_cache,
    build_token_cache,
    check_cache,
    pixel_meta,
    pixel_rows,
    token_meta,
    token_rows,
)
from icsd.data.datasets import EvalTexts, TrainPairs, load_image
from icsd.data.feature_file import meta_path
from icsd.data.pixels import split_transform
from icsd.errors import DataError
from icsd.lease import Lease

from conftest import EXAMPLE_CONFIG, EXAMPLE_DATA, REPO, tiny_overrides


def batches(dataset, size: int = 16):
    return list(DataLoader(dataset, batch_size=size, shuffle=False))


@pytest.mark.parametrize("size", [64, 224, 336])  # the tiny model, ViT-B/32, ViT-L/14@336
def test_batches_from_the_caches_equal_the_decoded_and_tokenized_ones(example_cfg, tmp_path, size):
    pixels = split_transform(open_clip.image_transform(size, is_train=False))
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    split = load_data_split(example_cfg.data, "val")
    build_pixel_cache(str(tmp_path / "val_pixels.npy"), split, pixels.host, num_workers=2)
    build_token_cache(str(tmp_path / "val_tokens.npy"), split, tokenizer, token_meta(split, "ViT-B-32", 77))
    images, tokens = Rows(str(tmp_path / "val_pixels.npy")), Rows(str(tmp_path / "val_tokens.npy"), as_long=True)
    decoded = batches(TrainPairs(split, pixels.host, tokenizer))
    cached = batches(TrainPairs(split, pixels.host, tokenizer, images=images, tokens=tokens))
    assert len(decoded) == len(cached) == 7
    for expected, got in zip(decoded, cached):
        assert expected.keys() == got.keys()
        for key in expected:
            assert expected[key].dtype == got[key].dtype and torch.equal(expected[key], got[key]), key
    assert torch.equal(torch.stack([EvalTexts(split, tokenizer)[i] for i in range(10)]),
                       torch.stack([EvalTexts(split, tokenizer, tokens)[i] for i in range(10)]))


def test_evaluation_from_the_caches_gives_the_same_metrics(tmp_path, monkeypatch):
    """Training and evaluation with the caches set decode no image and tokenize no caption; a checkpoint
    evaluated from the originals and from the caches: identical metrics."""
    import retrieval
    from icsd.data import datasets

    def forbidden(*args):
        raise AssertionError("an image decoded or a caption tokenized although the caches are set")

    monkeypatch.setattr(datasets, "load_image", forbidden)
    monkeypatch.setattr(datasets.Tokenized, "__call__", forbidden)
    out = str(tmp_path / "run")
    assert retrieval.main(["--config", EXAMPLE_CONFIG, "--opts", *tiny_overrides(
        f"output_dir={out}", "train.epochs=1", "eval.splits=[val]", "eval.eval_before_training=false")]) == 0
    ckpt = os.path.join(out + "_seed42", "checkpoint_last.pth")
    results = {}
    for name, opts in (("cached", []), ("decoded", ["data.pixel_cache=null", "data.token_cache=null"])):
        if name == "decoded":
            monkeypatch.undo()
        path = str(tmp_path / f"{name}.json")
        assert evaluation.main(["--checkpoint", ckpt, "--split", "val", "test", "--out", path,
                                *(["--opts", *opts] if opts else [])]) == 0
        results[name] = json.load(open(path))
    assert results["cached"] == results["decoded"]


def test_a_cache_that_no_longer_matches_is_refused(tmp_path, monkeypatch):
    """Another transform, changed images, other library versions, other captions: each named, with how to
    rebuild. The data folder named by a relative path is the same cache."""
    root = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATA, root)
    split = load_split("val", str(root / "val.json"), str(root))
    pixels = split_transform(open_clip.image_transform(64, is_train=False))
    path = str(tmp_path / "val_pixels.npy")
    build_pixel_cache(path, split, pixels.host)
    check_cache(path, pixel_meta(split, pixels.host), split.num_images, "data.pixel_cache")  # as built: fine
    monkeypatch.chdir(tmp_path)
    relative = load_split("val", os.path.join("data", "val.json"), "data")
    check_cache(path, pixel_meta(relative, pixels.host), split.num_images, "data.pixel_cache")
    other = split_transform(open_clip.image_transform(72, is_train=False))
    with pytest.raises(DataError, match=r"no longer matches: it was made with another transform.*Rebuild it: remove"):
        check_cache(path, pixel_meta(split, other.host), split.num_images, "data.pixel_cache")
    meta = json.load(open(meta_path(path)))
    meta["pillow"] = "9.0.0"
    json.dump(meta, open(meta_path(path), "w"))
    with pytest.raises(DataError, match=r"other library versions \(Pillow 9.0.0"):
        check_cache(path, pixel_meta(split, pixels.host), split.num_images, "data.pixel_cache")
    build_pixel_cache(path, split, pixels.host, overwrite=True)
    os.utime(split.image_paths[3], (0, 1_000_000))  # an image touched since
    with pytest.raises(DataError, match=r"1 image\(s\) changed since \(size or modification time\), first .*"):
        check_cache(path, pixel_meta(split, pixels.host), split.num_images, "data.pixel_cache")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    tokens = str(tmp_path / "val_tokens.npy")
    build_token_cache(tokens, split, tokenizer, token_meta(split, "ViT-B-32", 77))
    records = json.load(open(root / "val.json"))
    records[0]["caption"] = "a completely different caption"
    (root / "val.json").write_text(json.dumps(records))
    edited = load_split("val", str(root / "val.json"), str(root))
    with pytest.raises(DataError, match=r"no longer matches: its captions differ"):
        check_cache(tokens, token_meta(edited, "ViT-B-32", 77), edited.num_captions, "data.token_cache")


def test_training_refuses_a_stale_cache_and_reads_a_complete_one_without_writing(tmp_path, monkeypatch):
    """What training and evaluation call (``pixel_rows``, ``token_rows``): a cache of another transform or
    tokenizer is refused, never silently rebuilt; a complete one is used without taking its lease (a read-only
    data folder); one whose sidecar a kill left unwritten is rebuilt; models that share a tokenizer share the
    token cache."""
    cfg = load_config_example()
    data = cfg.data.__class__(**{**cfg.data.__dict__, "pixel_cache": str(tmp_path / "{split}_pixels.npy"),
                                 "token_cache": str(tmp_path / "{split}_tokens.npy")})
    split = load_data_split(data, "val")
    pixels = split_transform(open_clip.image_transform(64, is_train=False))
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert len(pixel_rows(data, split, pixels.host)) == split.num_images  # built on first use
    assert len(token_rows(data, split, tokenizer, 77)) == split.num_captions
    before = open(tmp_path / "val_pixels.npy", "rb").read()
    other = split_transform(open_clip.image_transform(72, is_train=False))
    with pytest.raises(DataError, match=r"data.pixel_cache: the cache .*val_pixels.npy no longer matches: it was "
                                        r"made with another transform"):
        pixel_rows(data, split, other.host)
    assert open(tmp_path / "val_pixels.npy", "rb").read() == before
    assert caches_module.tokenizer_identity(open_clip.get_tokenizer("ViT-L-14-336")) == \
        caches_module.tokenizer_identity(tokenizer)  # ViT-B/32 and ViT-L/14@336 configs share {split}_tokens.npy
    token_rows(data, split, open_clip.get_tokenizer("ViT-L-14-336"), 77)
    with pytest.raises(DataError, match=r"data.token_cache: .* no longer matches: its tokenizer differs"):
        token_rows(data, split, open_clip.SimpleTokenizer(context_length=32), 32)

    os.remove(meta_path(str(tmp_path / "val_pixels.npy")))  # a build killed between its last two renames
    assert len(pixel_rows(data, split, pixels.host)) == split.num_images  # rebuilt, not refused
    assert open(tmp_path / "val_pixels.npy", "rb").read() == before

    def no_lock(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Lease, "acquire", no_lock)  # as a read-only folder would
    assert len(pixel_rows(data, split, pixels.host)) == split.num_images
    os.remove(tmp_path / "val_tokens.npy")
    with pytest.raises(DataError, match=r"data.token_cache: cannot build .*val_tokens.npy: cannot create "
                                        r".*val_tokens.npy.lock \(Permission denied\); build the cache where"):
        token_rows(data, split, tokenizer, 77)


def test_a_build_resumes_and_checks_the_free_space(tmp_path, monkeypatch):
    split = load_data_split(load_config_example().data, "val")
    pixels = split_transform(open_clip.image_transform(64, is_train=False))
    path = str(tmp_path / "val_pixels.npy")
    build_pixel_cache(path, split, pixels.host)
    whole = np.load(path)
    os.remove(path), os.remove(meta_path(path))

    calls = {"n": 0}
    real_write = caches_module.FeatureWriter.write

    def interrupted(self, block):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the build is stopped after its first batch of 8
        return real_write(self, block)

    monkeypatch.setattr(caches_module.FeatureWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_pixel_cache(path, split, pixels.host, batch_size=8)
    assert not os.path.exists(path) and os.path.exists(path + ".partial.npy")
    monkeypatch.setattr(caches_module.FeatureWriter, "write", real_write)
    decoded = []
    monkeypatch.setattr(caches_module, "_Decoded", counting(caches_module._Decoded, decoded))
    build_pixel_cache(path, split, pixels.host, batch_size=8)
    assert decoded == [split.num_images - 8]  # only the images after the first batch were decoded again
    assert np.array_equal(np.load(path), whole)

    monkeypatch.setattr(caches_module.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10, 10, 1000))
    needs = r"building .*other.npy needs 0.00 GB \(20 rows x 12,288 bytes\), .* 0.00 GB free: .* or use data.image_root"
    with pytest.raises(DataError, match=needs):
        build_pixel_cache(str(tmp_path / "other.npy"), split, pixels.host)


def counting(dataset_class, sizes: list):
    class Counting(dataset_class):
        def __init__(self, paths, host):
            sizes.append(len(paths))
            super().__init__(paths, host)

    return Counting


def load_config_example():
    from icsd.config import load_config

    return load_config(EXAMPLE_CONFIG, tiny_overrides())


def test_a_second_run_waits_for_the_cache_another_builds(tmp_path, monkeypatch, caplog):
    """The cache's lease is held by another live process: this run waits (one line), then finds the cache
    complete and does not build it again."""
    import logging

    cfg = load_config_example()
    data = cfg.data.__class__(**{**cfg.data.__dict__, "pixel_cache": str(tmp_path / "{split}_pixels.npy")})
    split = load_data_split(data, "val")
    pixels = split_transform(open_clip.image_transform(64, is_train=False))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease = Lease(str(tmp_path / "val_pixels.npy.lock"))
        lease.holder.pid = holder.pid  # the lease names another live process
        lease.holder.process_start = lease_module._process_start(holder.pid)
        lease.acquire()
        lease._stop.set()
        monkeypatch.setattr(caches_module, "WAIT_SECONDS", 0.2)
        built = []
        monkeypatch.setattr(caches_module, "build_pixel_cache", lambda *a, **k: built.append(a))

        def the_other_run_finishes() -> None:
            time.sleep(1.0)
            build_pixel_cache(str(tmp_path / "val_pixels.npy"), split, pixels.host)
            lease.release()

        threading.Thread(target=the_other_run_finishes).start()
        with caplog.at_level(logging.INFO, logger="icsd"):
            rows = pixel_rows(data, split, pixels.host)
        assert built == [] and len(rows) == split.num_images
        assert f"waiting for {tmp_path}/val_pixels.npy: pid {holder.pid}" in caplog.text
    finally:
        holder.kill()


def test_the_example_config_builds_its_caches_on_first_use_and_reads_them(tmp_path):
    """The demo's config (pixel and token caches on): a first run builds them in the data root, the cached rows
    equal the decoded ones, and the prep command finds them complete."""
    root = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATA, root, ignore=shutil.ignore_patterns("*_pixels*", "*_tokens*"))
    cfg = load_config_example()
    data = cfg.data.__class__(**{**cfg.data.__dict__, "root": str(root), "pixel_cache": "{split}_pixels64.npy",
                                 "token_cache": "{split}_tokens.npy"})
    split = load_data_split(data, "test")
    from icsd.models.backbone import build_backbone

    backbone = build_backbone(cfg.model, weights_follow=True)
    rows = pixel_rows(data, split, backbone.pixels.host)
    tokens = token_rows(data, split, backbone.tokenizer, backbone.clip.context_length)
    assert os.path.isfile(root / "test_pixels64.npy") and os.path.isfile(root / "test_tokens.npy")
    assert torch.equal(rows(3), backbone.pixels.host(load_image(split.image_paths[3])))
    assert torch.equal(tokens(5), backbone.tokenizer(split.captions[5])[0])
    command = [sys.executable, "-m", "icsd.prep", "pixels", "--config", EXAMPLE_CONFIG, "--splits", "test",
               "--opts", f"data.root={root}", f"model.clip={REPO}/configs/models/icsd-tiny.json"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and "building" not in out.stdout + out.stderr and "[done]" in out.stdout, out.stderr


def test_building_a_cache_leaves_the_random_stream_alone(tmp_path):
    """A run that builds its pixel cache draws the same random numbers afterwards as one that found it built."""
    split = load_data_split(load_config_example().data, "val")
    pixels = split_transform(open_clip.image_transform(64, is_train=False))
    torch.manual_seed(0)
    build_pixel_cache(str(tmp_path / "val_pixels.npy"), split, pixels.host)
    after_build = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_build)
