"""uint8 loading + normalisation on the device (icsd.data.pixels) equals the backbone's full transform."""
from __future__ import annotations

import open_clip
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from icsd.data.build import load_data_split
from icsd.data.datasets import TrainPairs, load_image
from icsd.data.pixels import DeviceBatches, split_transform
from icsd.errors import ConfigError


@pytest.mark.parametrize("size", [64, 224, 336])  # the tiny model, ViT-B/32, ViT-L/14@336
def test_split_transform_is_bit_identical(example_cfg, size):
    transform = open_clip.image_transform(size, is_train=False)
    pixels = split_transform(transform)
    split = load_data_split(example_cfg.data, "test")
    images = [load_image(p) for p in split.image_paths[:6]]
    images.append(Image.new("L", (50, 90), 77).convert("RGB"))  # smaller than the input: upsampled
    host = torch.stack([pixels.host(im) for im in images])
    assert host.dtype == torch.uint8 and host.shape == (len(images), 3, size, size)
    assert torch.equal(pixels.normalize(host), torch.stack([transform(im) for im in images]))


def test_device_batches_give_the_full_transform_batches(example_cfg):
    from icsd.models.backbone import build_backbone

    backbone = build_backbone(example_cfg.model)
    split = load_data_split(example_cfg.data, "train")
    full = DataLoader(TrainPairs(split, backbone.transform, backbone.tokenizer), batch_size=8)
    host = DataLoader(TrainPairs(split, backbone.pixels.host, backbone.tokenizer), batch_size=8)
    device_batches = DeviceBatches(host, torch.device("cpu"), backbone.pixels)
    assert len(device_batches) == len(full) == 38
    for k, (expected, got) in enumerate(zip(full, device_batches)):
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
        if k == 2:
            break


def test_split_transform_needs_to_tensor_and_normalize():
    with pytest.raises(ConfigError, match="must end in ToTensor, Normalize"):
        split_transform(T.Compose([T.Resize(64), T.ToTensor()]))
    with pytest.raises(ConfigError, match="must end in ToTensor, Normalize"):
        split_transform(lambda image: image)
