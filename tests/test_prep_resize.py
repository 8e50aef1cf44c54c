"""The prepared image cache (docs/data.md): ``icsd.tools.prep.resize`` (library and command) and the training
loader reading ``data.image_root``."""
from __future__ import annotations

import argparse
import json
import os

import pytest
from PIL import Image

from icsd.config import load_config
from icsd.data.annotations import load_split
from icsd.data.build import build_train_pairs, load_data_split, training_split
from icsd.errors import ConfigError, DataError
from icsd.tools.prep import resize

from conftest import EXAMPLE_CONFIG, EXAMPLE_DATA, REPO, tiny_overrides


@pytest.mark.parametrize("width,height", [(640, 480), (480, 640), (500, 333), (224, 300), (100, 80), (641, 427)])
def test_target_size_is_torchvisions_resize(width, height):
    from torchvision.transforms import InterpolationMode, Resize

    expected = Resize(224, interpolation=InterpolationMode.BICUBIC)(Image.new("RGB", (width, height))).size
    if min(width, height) <= 224:
        expected = (width, height)  # the cache never enlarges
    assert resize.target_size(width, height, 224) == expected


def example_images(split: str = "val", limit: int = 6) -> list[tuple[str, str]]:
    data = load_split(split, os.path.join(EXAMPLE_DATA, f"{split}.json"), EXAMPLE_DATA)
    return [(p, os.path.relpath(p, EXAMPLE_DATA)) for p in data.image_paths[:limit]]


def test_resize_writes_mirrored_jpegs_and_a_manifest(tmp_path):
    images = example_images()
    manifest = resize.resize_images(images, str(tmp_path), EXAMPLE_DATA, size=64, quality=90)
    assert manifest["count"] == len(images) and manifest["last_run"] == {"done": 6, "skipped": 0, "failed": 0}
    assert json.load(open(tmp_path / "manifest.json")) == manifest
    for src, rel in images:
        with Image.open(src) as original, Image.open(tmp_path / rel) as prepared:
            assert prepared.format == "JPEG" and min(prepared.size) == 64
            assert prepared.size == resize.target_size(*original.size, 64) == tuple(manifest["images"][rel])
    assert not [f for f in os.listdir(tmp_path / os.path.dirname(images[0][1])) if f.endswith(".tmp")]


def test_resize_resumes_and_redoes_a_torn_output(tmp_path):
    images = example_images()
    resize.resize_images(images[:3], str(tmp_path), EXAMPLE_DATA, size=64)
    torn = tmp_path / images[1][1]
    torn.write_bytes(torn.read_bytes()[:len(torn.read_bytes()) // 2])  # as a kill in mid-copy would leave it
    manifest = resize.resize_images(images, str(tmp_path), EXAMPLE_DATA, size=64)
    assert manifest["last_run"] == {"done": 4, "skipped": 2, "failed": 0} and manifest["count"] == 6
    with Image.open(torn) as image:
        assert min(image.size) == 64


def test_parallel_equals_serial(tmp_path):
    images = example_images(limit=8)
    resize.resize_images(images, str(tmp_path / "one"), EXAMPLE_DATA, size=48, workers=1)
    resize.resize_images(images, str(tmp_path / "two"), EXAMPLE_DATA, size=48, workers=2)
    for _, rel in images:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_other_settings_into_the_same_cache_are_refused(tmp_path):
    resize.resize_images(example_images(limit=2), str(tmp_path), EXAMPLE_DATA, size=64)
    with pytest.raises(ConfigError, match="holds a cache made with size 64 and quality 95, not 96 and 95"):
        resize.resize_images(example_images(limit=2), str(tmp_path), EXAMPLE_DATA, size=96)


def test_unreadable_image_is_reported_after_the_others(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    images = [(str(bad), "bad.jpg"), *example_images(limit=2)]
    with pytest.raises(DataError, match=r"1 image\(s\) could not be prepared .*cannot prepare .*bad.jpg"):
        resize.resize_images(images, str(tmp_path / "out"), EXAMPLE_DATA, size=64)
    assert json.load(open(tmp_path / "out" / "manifest.json"))["count"] == 2


def run_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    resize.configure(parser)
    resize.run(parser.parse_args(argv))


def test_command_prepares_the_splits_a_config_names(tmp_path, capsys):
    run_command(["--root", EXAMPLE_DATA, "--splits", "val", "test", "--size", "64", "--workers", "1",
                 "--no-progress", "--out", str(tmp_path)])
    assert "40 images at shorter side 64" in capsys.readouterr().out
    # the model's input size comes from the config (the tiny model: 64 px); --out from data.image_root
    config = tmp_path / "cfg.yaml"
    config.write_text(f"_base_: {EXAMPLE_CONFIG}\n"
                      f"data: {{root: {EXAMPLE_DATA}, image_root: {tmp_path}/c, pixel_cache: null}}\n"
                      f"model: {{clip: {REPO}/configs/models/icsd-tiny.json}}\n")
    run_command(["--config", str(config), "--splits", "val", "--workers", "1", "--no-progress"])
    assert json.load(open(tmp_path / "c" / "manifest.json"))["size"] == 64
    with pytest.raises(ConfigError, match="--size is required"):
        run_command(["--root", EXAMPLE_DATA, "--out", str(tmp_path / "d")])
    with pytest.raises(ConfigError, match=r"--size 48 is below the input size of the config's model \(64\)"):
        run_command(["--config", str(config), "--size", "48", "--splits", "val", "--no-progress"])


def test_training_reads_the_cache_and_a_missing_image_stops_before_training(tmp_path):
    cfg = load_config(EXAMPLE_CONFIG, tiny_overrides(f"data.image_root={tmp_path}/cache", "data.pixel_cache=null"))
    split = load_data_split(cfg.data, "train")
    with pytest.raises(DataError, match=r"data.image_root: the prepared image cache .*/cache not found"):
        training_split(cfg.data, split)
    os.makedirs(tmp_path / "cache")
    with pytest.raises(DataError, match=r"prepared image of image_id .* not found: .*cache/pics/.*data.image_root"):
        training_split(cfg.data, split)
    resize.resize_images([(p, os.path.relpath(p, EXAMPLE_DATA)) for p in split.image_paths],
                         str(tmp_path / "cache"), EXAMPLE_DATA, size=64)
    cached = training_split(cfg.data, split)
    assert cached.image_paths == [os.path.join(tmp_path, "cache", os.path.relpath(p, EXAMPLE_DATA))
                                  for p in split.image_paths]
    assert cached.captions == split.captions and (cached.txt2img == split.txt2img).all()
    from torchvision.transforms import ToTensor

    pairs = build_train_pairs(cfg, cached, None, ToTensor(), lambda text: [text])
    assert min(pairs[0]["image"].shape[1:]) == 64  # decoded from the 64 px cache, not the 640 px original
    # image_root null: the originals
    assert training_split(load_config(EXAMPLE_CONFIG, tiny_overrides("data.image_root=null")).data, split) is split


def test_missing_cache_fails_a_run_with_one_line(tmp_path, capsys):
    import retrieval

    code = retrieval.main(["--config", EXAMPLE_CONFIG, "--opts",
                           *tiny_overrides(f"output_dir={tmp_path}/run", f"data.image_root={tmp_path}/none",
                                           "data.pixel_cache=null")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: data.image_root: the prepared image cache ") and "not found" in err
    assert not os.path.exists(f"{tmp_path}/run_seed42/checkpoint_last.pth")
