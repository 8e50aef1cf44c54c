"""Fine-tuning knobs: per-group learning-rate multipliers through timm's ``lr_scale``, locked towers through
open_clip, the plain fine-tune's missing heads (``model.heads: none``) and its temperature taken from the
pretrained model's logit scale."""
from __future__ import annotations

import math

import pytest
import torch

from icsd.config import load_config
from icsd.errors import ConfigError
from icsd.losses import Criterion
from icsd.models import build_model
from icsd.train.optim import build_optimizer, build_scheduler

from conftest import EXAMPLE_CONFIG, tiny_overrides

SCALES = {"heads": 10.0, "pdm": 5.0, "temperatures": 2.0, "backbone": 1.0}


def config(*opts):
    return load_config(EXAMPLE_CONFIG, tiny_overrides(*opts))


def a_step(model, optimizer, cfg, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(4, 3, size, size, generator=gen)
    tokens = torch.randint(1, 1000, (4, model.clip.context_length), generator=gen)
    batch = {"image_index": torch.tensor([0, 1, 1, 2]), "ext_img": torch.randn(4, 12, generator=gen),
             "ext_txt": torch.randn(4, 384, generator=gen)}
    Criterion(cfg.loss)(model(images, tokens), batch, model)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_each_group_runs_at_the_schedule_times_its_multiplier():
    """Warm-up, cosine and min_lr: at every step each group's rate is the plain schedule's times its multiplier."""
    opts = ("train.optimizer.head_lr_scale=10", "train.optimizer.pdm_lr_scale=5",
            "train.optimizer.temperature_lr_scale=2", "train.scheduler.warmup_epochs=1", "train.epochs=3")
    cfg, plain_cfg = config(*opts), config("train.scheduler.warmup_epochs=1", "train.epochs=3")
    model, _ = build_model(cfg)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, updates_per_epoch=4)
    reference = build_optimizer(build_model(plain_cfg)[0], plain_cfg.train)
    reference_schedule = build_scheduler(reference, plain_cfg.train, updates_per_epoch=4)
    groups = {g["group"] for g in optimizer.param_groups}
    assert groups == set(SCALES)
    for step in range(13):
        for s in (scheduler, reference_schedule):
            s.step_update(step)
        value = reference.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(value * SCALES[group["group"]], rel=1e-12), (step, group["group"])
    assert reference.param_groups[0]["lr"] == pytest.approx(cfg.train.scheduler.min_lr, rel=1e-6)  # the end
    names = {id(p): n for n, p in model.named_parameters()}
    of = {names[id(p)]: g["group"] for g in optimizer.param_groups for p in g["params"]}
    assert of["temperatures.tau.value"] == "temperatures" and of["image_head.0.log_scale"] == "pdm"
    assert of["image_head.1.weight"] == "heads" and of["clip.visual.conv1.weight"] == "backbone"


@pytest.mark.parametrize("tower", ["image", "text"])
def test_a_locked_tower_does_not_move_and_holds_no_optimizer_state(tower):
    unlocked = "model.lock_image_unlocked_groups=1" if tower == "image" else "model.lock_text_unlocked_layers=1"
    cfg = config(f"model.lock_{tower}=true", unlocked)
    model, _ = build_model(cfg)
    optimizer = build_optimizer(model, cfg.train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for seed in range(2):
        a_step(model, optimizer, cfg, seed)
    prefix = "clip.visual." if tower == "image" else "clip.transformer."
    locked = [n for n, p in model.named_parameters() if not p.requires_grad and n.startswith(prefix)]
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert locked and all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in locked)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]} | {id(p) for p in optimizer.state}
    params = dict(model.named_parameters())
    assert not any(id(params[n]) in in_optimizer for n in locked)
    # open_clip's last group / layer of a tower is its projection to the joint space: it still trains
    assert ("clip.visual.proj" if tower == "image" else "clip.text_projection") in moved
    assert any(n.startswith("image_head") for n in moved)


def test_no_heads_gives_clips_own_embeddings():
    cfg = config("model.heads=none", "model.pdm.enabled=false")
    model, _ = build_model(cfg)
    assert not any(k.startswith(("image_head", "text_head")) for k in model.state_dict())
    images = torch.randn(3, 3, 64, 64)
    x, f = model.encode_image(images)
    torch.testing.assert_close(f, torch.nn.functional.normalize(model.clip.encode_image(images).float(), dim=-1))
    with pytest.raises(ConfigError, match=r"model.heads: none uses CLIP's own embeddings.*model.pdm.enabled: false"):
        config("model.heads=none")


@pytest.mark.parametrize("scale, tau", [(50.0, 0.02), (100.0, 0.01), (400.0, 0.01)])
def test_tau_from_the_pretrained_logit_scale(tmp_path, scale, tau):
    """A weights file whose logit scale is chosen: tau starts at 1/scale, within its clamp [0.01, 0.10]."""
    model, _ = build_model(config())
    weights = {k: v.clone() for k, v in model.clip.state_dict().items()}
    weights["logit_scale"] = torch.tensor(math.log(scale))
    torch.save(weights, tmp_path / "weights.pt")
    cfg = config(f"model.pretrained={tmp_path}/weights.pt", "loss.contrastive.tau_from_model=true")
    tuned, _ = build_model(cfg)
    assert float(tuned.temperature("tau").detach()) == pytest.approx(tau, rel=1e-6)
    untouched = build_model(config(f"model.pretrained={tmp_path}/weights.pt"))[0]
    assert float(untouched.temperature("tau").detach()) == pytest.approx(0.05)  # the config's tau otherwise
