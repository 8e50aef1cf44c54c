"""Every shipped paper config takes a real optimizer step with its real architecture (random init,
amp_bf16, batch 2, synthetic images at the model's input size, real tokens, synthetic teacher features):
the loss is finite, every trainable parameter gets a finite gradient and the parameters move.

Cost: the backbone's backward is nearly all of it (ViT-B/32 at batch 2 in emulated bf16 takes about a
minute on a 2-core AVX2 CPU), so each architecture runs its backbone forward and backward ONCE for all
its configs: the backbone features are computed once, every config's own model (its heads, PDM or not, and
temperatures, through ``ICSDModel.forward``) and loss (``icsd.losses.Criterion``) run on them, the
sum of the configs' losses is backpropagated once, then each config's optimizer (timm AdamW from its config)
steps. On CUDA every config steps in amp_bf16 (``bench/gpu_check.sh`` runs this file). On a CPU without native
bf16 (this project's AVX2 machines) bf16 matmuls are emulated: the ViT-B/32 configs still step in amp_bf16
(about a minute with one thread), the ViT-L/14@336 ones in fp32 (emulated bf16 takes over 5 minutes there,
more than the whole suite's budget; fp32 takes under one). ICSD_CPU_BF16=1 forces bf16 for ViT-L too.
"""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from torch import nn

from icsd.amp import autocast
from icsd.config import Config, config_to_dict, load_config
from icsd.losses import Criterion
from icsd.models import ICSDModel
from icsd.models.backbone import build_backbone
from icsd.train.optim import build_optimizer

from conftest import REPO

CONFIG_DIR = os.path.join(REPO, "configs")
PAPER_CONFIGS = sorted(os.path.relpath(p, CONFIG_DIR)
                       for p in glob.glob(os.path.join(CONFIG_DIR, "vitb32", "*", "*.yaml"))
                       + glob.glob(os.path.join(CONFIG_DIR, "vitl14_336", "*", "*.yaml")))
ARCHITECTURES = {"ViT-B-32-quickgelu": 224, "ViT-L-14-336-quickgelu": 336}
TEACHER_DIM = 768  # Unicom ViT-B/32 and all-mpnet-base-v2 feature sizes
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precision(clip: str) -> str:
    too_slow_in_bf16 = DEVICE.type == "cpu" and clip.startswith("ViT-L") and not os.environ.get("ICSD_CPU_BF16")
    return "fp32" if too_slow_in_bf16 else "amp_bf16"


def load(name: str) -> Config:
    raw = load_config(os.path.join(CONFIG_DIR, name))
    return load_config(os.path.join(CONFIG_DIR, name), [
        "model.pretrained=null", f"train.precision={precision(raw.model.clip)}", "train.batch_size=2",
        f"train.device={DEVICE.type}"])


class SharedFeatures(nn.Module):
    """Stands in for the backbone inside ``ICSDModel.forward``: returns features computed once."""

    def __init__(self, x_img: torch.Tensor, x_txt: torch.Tensor):
        super().__init__()
        self.x_img, self.x_txt = x_img, x_txt

    def encode_image(self, images):
        return self.x_img

    def encode_text(self, tokens):
        return self.x_txt


def step_all(clip: str, names: list[str]) -> dict[str, dict]:
    """One step of every config in ``names`` (all of architecture ``clip``) on one backbone pass."""
    torch.manual_seed(0)
    backbone = build_backbone(load(names[0]).model)
    backbone.clip.to(DEVICE)
    size = ARCHITECTURES[clip]
    images = torch.randn(2, 3, size, size, device=DEVICE)
    tokens = backbone.tokenizer(["a man riding a wave on a surfboard", "two dogs play in the snow"]).to(DEVICE)
    batch = {"image": images, "tokens": tokens, "image_index": torch.tensor([0, 1], device=DEVICE),
             "ext_img": torch.randn(2, TEACHER_DIM, device=DEVICE).half(),
             "ext_txt": torch.randn(2, TEACHER_DIM, device=DEVICE).half()}
    models = {name: ICSDModel(backbone.clip, backbone.embed_dim, load(name)).to(DEVICE).train() for name in names}
    backbone.clip.train()
    optimizers = {name: build_optimizer(model, load(name).train) for name, model in models.items()}
    watched = ("clip.visual.conv1.weight", "clip.transformer.resblocks.0.attn.in_proj_weight")
    before = {name: {n: p.detach().clone() for n, p in model.named_parameters()
                     if p.requires_grad and (not n.startswith("clip.") or n in watched)}
              for name, model in models.items()}
    with autocast(precision(clip), DEVICE):
        shared = SharedFeatures(backbone.clip.encode_image(images), backbone.clip.encode_text(tokens))
    results, total = {}, 0.0
    for name, model in models.items():
        model.clip = shared  # this config's heads and temperatures on the shared backbone features
        with autocast(precision(clip), DEVICE):
            out = model(images, tokens)
        terms = Criterion(load(name).loss)(out, batch, model)
        model.clip = backbone.clip
        total = total + terms["loss"]
        results[name] = {"terms": {k: v.detach().float().cpu() for k, v in terms.items()}}
    total.backward()
    for name, model in models.items():
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        results[name]["no_grad"] = [n for n, p in trainable.items()
                                    if p.grad is None or not bool(torch.isfinite(p.grad).all())]
        results[name]["trainable"] = list(trainable)
    for name, model in models.items():
        optimizers[name].step()
        params = dict(model.named_parameters())
        results[name]["moved"] = {n: not torch.equal(t, params[n].detach()) for n, t in before[name].items()}
    return results


@pytest.fixture(scope="module")
def steps():
    done: dict[str, dict] = {}

    def result(name: str) -> dict:
        """Configs that differ only outside the model and the loss (COCO vs Flickr: data, epochs) train the
        same step: one of them steps for all."""
        if name not in done:
            clip = load(name).model.clip
            same_clip = [n for n in PAPER_CONFIGS if load(n).model.clip == clip]
            representative = {step_key(n): n for n in reversed(same_clip)}
            stepped = step_all(clip, sorted(set(representative.values())))
            done.update({n: stepped[representative[step_key(n)]] for n in same_clip})
        return done[name]
    return result


def step_key(name: str) -> str:
    cfg = config_to_dict(load(name))
    return json.dumps({"model": cfg["model"], "loss": cfg["loss"], "train": cfg["train"]["precision"]},
                      sort_keys=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_takes_one_optimizer_step(name, steps):
    cfg = load(name)
    assert cfg.model.clip in ARCHITECTURES
    result = steps(name)
    assert bool(torch.isfinite(result["terms"]["loss"])), result["terms"]
    assert result["no_grad"] == [], f"trainable parameters without a finite gradient: {result['no_grad'][:5]}"
    assert len(result["trainable"]) > 100  # the whole backbone trains, not only the heads
    assert all(result["moved"].values()), [n for n, m in result["moved"].items() if not m]
    assert (float(result["terms"]["loss_soft"]) > 0) == (cfg.loss.soft_label.weight > 0)
    assert ("image_head.0.log_scale" in result["moved"]) == cfg.model.pdm.enabled  # PDM scale vs LayerNorm
    assert (float(result["terms"].get("loss_uni", 0)) > 0) == ("uni_modal" in cfg.loss.terms)  # CUSA's term
    assert ("loss_heads.uni_image.1.weight" in result["moved"]) == ("uni_modal" in cfg.loss.terms)
    assert ("image_head.1.weight" in result["moved"]) == (cfg.model.heads == "linear")  # none: CLIP's own


def test_every_paper_config_is_covered():
    ladder = ("contrastive", "soft_external", "isf", "icsd", "cusa", "clip_finetune", "clip_finetune_soft")
    expected = {f"vitb32/{data}/{name}.yaml" for data in ("coco", "flickr") for name in ladder} | {
        f"vitl14_336/{data}/{name}.yaml" for data in ("coco", "flickr")
        for name in ("icsd", "cusa", "clip_finetune", "clip_finetune_soft")}
    assert set(PAPER_CONFIGS) == expected
