"""The ICSD model on real example batches: every ablation config trains a step with finite losses."""
from __future__ import annotations

import glob
import os

import pytest
import torch
from torch.utils.data import DataLoader

from icsd.config import load_config
from icsd.data.build import build_train_pairs, load_data_split, load_teacher_features
from icsd.errors import CheckpointError, ConfigError
from icsd.losses import Criterion, needs_teacher_features
from icsd.models import build_model
from icsd.models.backbone import build_backbone
from icsd.models.pdm import PDM

from conftest import REPO, tiny_overrides

ABLATIONS = sorted(glob.glob(os.path.join(REPO, "configs", "vitb32", "*", "*.yaml")))


def one_step(cfg):
    torch.manual_seed(0)
    split = load_data_split(cfg.data, "train")
    teacher = load_teacher_features(cfg.data, split) if needs_teacher_features(cfg.loss) else None
    model, backbone = build_model(cfg)
    pairs = build_train_pairs(cfg, split, teacher, backbone.transform, backbone.tokenizer)
    batch = next(iter(DataLoader(pairs, batch_size=16, shuffle=False)))
    out = model(batch["image"], batch["tokens"])
    terms = Criterion(cfg.loss)(out, batch, model)
    terms["loss"].backward()
    return model, terms, batch


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: os.path.relpath(p, os.path.join(REPO, "configs")))
def test_ablation_forward_backward(path):
    cfg = load_config(path, tiny_overrides())
    model, terms, batch = one_step(cfg)
    for name, value in terms.items():
        assert torch.isfinite(value).all(), name
    has_pdm = any(isinstance(m, PDM) for m in model.modules())
    assert has_pdm == cfg.model.pdm.enabled
    soft_on = cfg.loss.soft_label.weight > 0
    uni_on = "uni_modal" in cfg.loss.terms and cfg.loss.terms["uni_modal"].weight > 0
    assert (terms["loss_soft"].item() > 0) == soft_on
    assert ("ext_img" in batch) == (soft_on or uni_on)  # teacher features loaded only for the terms that read them
    assert ("tau_s" in model.temperatures) == soft_on
    if soft_on:
        assert model.temperatures["tau_s"].value.grad is not None
    if os.path.basename(path) == "contrastive.yaml":
        assert not has_pdm and "ext_img" not in batch and "tau_t" not in model.temperatures
    # the total is the sum of every term's weighted value (CUSA's uni-modal term included)
    weighted = [v.item() for k, v in terms.items() if k.startswith("loss_")]
    assert len(weighted) == len(cfg.loss.terms) and terms["loss"].item() == pytest.approx(sum(weighted))
    assert model.clip.visual.conv1.weight.grad.abs().sum() > 0
    assert model.temperatures["tau"].value.grad is not None


def test_ablations_differ_only_in_loss_and_model_keys():
    from icsd.config import config_to_dict

    for data in ("coco", "flickr"):
        full = config_to_dict(load_config(os.path.join(REPO, "configs", "vitb32", data, "icsd.yaml")))
        for name in ("contrastive", "soft_external", "isf"):
            other = config_to_dict(load_config(os.path.join(REPO, "configs", "vitb32", data, f"{name}.yaml")))
            changed = {k for k in full if full[k] != other[k]}
            assert changed <= {"loss", "model", "output_dir"}, (data, name, changed)


def test_unknown_model_and_missing_weights_fail_fast():
    cfg = load_config(None, ["model.clip=ViT-B-33", "model.pretrained=null"])
    with pytest.raises(ConfigError, match=r"unknown open_clip model 'ViT-B-33'"):
        build_backbone(cfg.model)
    cfg = load_config(None, ["model.pretrained=/nowhere/weights.pt"])
    with pytest.raises(CheckpointError, match=r"weights file not found: /nowhere/weights.pt"):
        build_backbone(cfg.model)
    cfg = load_config(None, ["model.pretrained=openaii"])
    with pytest.raises(ConfigError, match=r"'openaii' is neither a file nor a pretrained tag"):
        build_backbone(cfg.model)


def test_unreachable_pretrained_tag_says_how_to_pass_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None)  # ViT-B-32-quickgelu, pretrained openai: no network here
    with pytest.raises(CheckpointError, match=r"could not get pretrained weights 'openai'.*set model.pretrained"):
        build_backbone(cfg.model)


def test_local_weights_file_is_loaded(tmp_path):
    cfg = load_config(None, tiny_overrides())
    torch.manual_seed(1)
    first = build_backbone(cfg.model).clip
    path = str(tmp_path / "tiny.pt")
    torch.save(first.state_dict(), path)
    torch.manual_seed(2)
    cfg = load_config(None, tiny_overrides(f"model.pretrained={path}"))
    second = build_backbone(cfg.model).clip
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
