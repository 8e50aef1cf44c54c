"""The checkpoints the ICSD and CUSA authors released evaluate here: a checkpoint in their layout (their key
names and shapes, written out below from their code, on the tiny architecture: random values, fp16 CLIP
weights, temperatures as values, CLIP's unused logit_scale) loads strictly, and its embeddings equal a loop
computation from its tensors; PDM on and off, and CUSA's layout."""
from __future__ import annotations

import json
import math
import os

import open_clip
import pytest
import torch

import evaluation
from icsd.config import load_config
from icsd.distributed import DistEnv
from icsd.errors import CheckpointError, ICSDError
from icsd.models import build_model_for
from icsd.models.backbone import resolve_model_name
from icsd.pretrained import config_for_weights, load_checkpoint_or_export
from icsd.tools import export, show

from conftest import EXAMPLE_CONFIG, REPO, TINY_MODEL, tiny_overrides

D = 64  # the tiny model's embedding size


def reference_checkpoint(path: str, pdm: bool, cusa: bool = False, seed: int = 0) -> dict:
    """``{'model', 'config', 'epoch', 'best', 'best_epoch'}`` as their retrieval.py saves it."""
    gen = torch.Generator().manual_seed(seed)
    clip = open_clip.create_model(resolve_model_name(TINY_MODEL), pretrained=None)
    weights = {f"clip_model.{k}": (v + 0.01 * torch.randn(v.shape, generator=gen)).half()
               for k, v in clip.state_dict().items()}
    assert "clip_model.logit_scale" in weights  # CLIP's own, unused by the method: dropped on load

    def rand(*shape, scale=0.1, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=gen)

    for m in ("image", "text"):
        if pdm:
            weights[f"ln_cross_{m}_projection.scale_param"] = rand(D, mean=math.log(0.1))
            weights[f"ln_cross_{m}_projection.layernorm.weight"] = rand(D, mean=1.0)
            weights[f"ln_cross_{m}_projection.layernorm.bias"] = rand(D)
        else:
            weights[f"ln_cross_{m}_projection.weight"] = rand(D, mean=1.0)
            weights[f"ln_cross_{m}_projection.bias"] = rand(D)
        weights[f"cross_{m}_projection.weight"] = rand(D, D, scale=0.02)
        weights[f"cross_{m}_projection.bias"] = rand(D)
        if cusa:
            weights[f"ln_uni_{m}_projection.weight"] = rand(D, mean=1.0)
            weights[f"ln_uni_{m}_projection.bias"] = rand(D)
            weights[f"uni_{m}_projection.weight"] = rand(D, D, scale=0.02)
            weights[f"uni_{m}_projection.bias"] = rand(D)
            weights[f"uni_tau_{m}"] = torch.tensor(0.4 if m == "image" else 0.5)
    weights.update(tau=torch.tensor(0.021), cross_tau=torch.tensor(0.38), cross_the_softlabel_tau=torch.tensor(1.0))
    state = {"model": weights, "epoch": 7, "best": 81.2, "best_epoch": 6,
             "config": {"clip_model": TINY_MODEL, "train_file": ["/their/machine/data/new_train.json"],
                        "loss_config": {"cross_softlabel": {"is_on": pdm}}}}
    torch.save(state, path)
    return state


def config_path(tmp_path, cusa: bool) -> str:
    path = tmp_path / ("cusa.yaml" if cusa else "icsd.yaml")
    base = os.path.join(REPO, "configs", "example", "cusa.yaml" if cusa else "icsd.yaml")
    path.write_text(f"_base_: {base}\n")
    return str(path)


def loop_embedding(x: list, state: dict, m: str, pdm: bool, batch: list) -> list:
    """f for one row of ``x`` (the backbone's feature) from the checkpoint's own tensors, in loops; PDM mixes
    the rows of ``batch`` (the whole encoded batch)."""
    w = state["model"]

    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    def layernorm(v, gamma, beta, eps):
        mean = sum(v) / len(v)
        var = sum((a - mean) ** 2 for a in v) / len(v)
        return [(a - mean) / math.sqrt(var + eps) * float(gamma[d]) + float(beta[d]) for d, a in enumerate(v)]

    if pdm:
        us = [unit(row) for row in batch]
        i = batch.index(x)
        sim = [[sum(a * b for a, b in zip(us[p], us[q])) for q in range(len(us))] for p in range(len(us))]
        row_soft = [math.exp(s) / sum(math.exp(t) for t in sim[i]) for s in sim[i]]
        col_soft = [math.exp(sim[i][q]) / sum(math.exp(sim[p][q]) for p in range(len(us))) for q in range(len(us))]
        mixed = [sum((row_soft[q] + col_soft[q]) * us[q][d] for q in range(len(us))) for d in range(len(x))]
        scale = [math.exp(float(t)) for t in w[f"ln_cross_{m}_projection.scale_param"]]
        y = [scale[d] * us[i][d] - scale[d] * mixed[d] for d in range(len(x))]
        z = layernorm(y, w[f"ln_cross_{m}_projection.layernorm.weight"], w[f"ln_cross_{m}_projection.layernorm.bias"],
                      1e-6)
    else:
        z = layernorm(x, w[f"ln_cross_{m}_projection.weight"], w[f"ln_cross_{m}_projection.bias"], 1e-5)
    W, b = w[f"cross_{m}_projection.weight"].double(), w[f"cross_{m}_projection.bias"].double()
    return unit([sum(float(W[o][d]) * z[d] for d in range(len(z))) + float(b[o]) for o in range(len(z))])


@pytest.mark.parametrize("pdm, cusa", [(True, False), (False, False), (False, True)], ids=["icsd", "pdm_off", "cusa"])
def test_a_released_checkpoint_loads_and_embeds_as_its_tensors_say(tmp_path, pdm, cusa):
    path = str(tmp_path / "checkpoint_best.pth")
    state = reference_checkpoint(path, pdm, cusa)
    loaded = load_checkpoint_or_export(path)
    cfg = config_for_weights(loaded, path, config_path(tmp_path, cusa), tiny_overrides())
    assert cfg.model.pdm.enabled == pdm and cfg.model.clip == TINY_MODEL
    model, _ = build_model_for(cfg, DistEnv(), loaded["model"], path)  # strict: every key placed, none missing
    model.eval()
    assert float(model.temperature("tau").detach()) == pytest.approx(0.021)
    assert float(model.temperature("tau_s").detach()) == pytest.approx(0.38)
    if cusa:
        assert float(model.temperature("tau_u_img").detach()) == pytest.approx(0.4)
        assert torch.equal(model.head("uni_text")[1].weight, state["model"]["uni_text_projection.weight"])
    clip = open_clip.create_model(resolve_model_name(TINY_MODEL), pretrained=None)
    clip.load_state_dict({k[len("clip_model."):]: v.float() for k, v in state["model"].items()
                          if k.startswith("clip_model.")})
    clip.eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a dog", "two cats on a bed", "a red bus", "snow"])[:, :32]
    with torch.no_grad():
        for m, x, f in (("image", clip.encode_image(images), model.encode_image(images)[1]),
                        ("text", clip.encode_text(tokens), model.encode_text(tokens)[1])):
            batch = x.double().tolist()
            expected = torch.tensor([loop_embedding(row, state, m, pdm, batch) for row in batch], dtype=torch.float64)
            torch.testing.assert_close(f.double(), expected, rtol=1e-4, atol=1e-5)


def test_keys_left_over_on_either_side_are_named(tmp_path):
    path = str(tmp_path / "ckpt.pth")
    state = reference_checkpoint(path, pdm=True)
    state["model"]["some_new_projection.weight"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"has keys with no place in this model: some_new_projection.weight"):
        load_checkpoint_or_export(path)
    del state["model"]["some_new_projection.weight"], state["model"]["cross_text_projection.bias"]
    torch.save(state, path)
    loaded = load_checkpoint_or_export(path)
    cfg = config_for_weights(loaded, path, config_path(tmp_path, False), tiny_overrides())
    with pytest.raises(CheckpointError, match=r"missing \[text_head.1.bias\], unexpected \[\]"):
        build_model_for(cfg, DistEnv(), loaded["model"], path)
    reference_checkpoint(path, pdm=False, cusa=True)
    with pytest.raises(CheckpointError, match=r"has CUSA's uni-modal heads: use a config with loss.uni_modal"):
        config_for_weights(load_checkpoint_or_export(path), path, config_path(tmp_path, False), tiny_overrides())


def test_evaluation_export_and_show_take_a_released_checkpoint(tmp_path, capsys):
    """evaluation.py needs --config (their paths are their machine's); the architecture and PDM come from the
    checkpoint, a disagreement with the config named; the export of it evaluates the same; show draws its sheet."""
    path = str(tmp_path / "checkpoint_best.pth")
    reference_checkpoint(path, pdm=True)
    assert evaluation.main(["--checkpoint", path, "--split", "val"]) == 1
    assert "released by the ICSD or CUSA authors: its config holds their machine's paths. Give --config" in \
        capsys.readouterr().err
    opts = tiny_overrides("model.pdm.enabled=false", "model.clip=ViT-B-32-quickgelu")  # both replaced, both named
    out = str(tmp_path / "metrics.json")
    assert evaluation.main(["--checkpoint", path, "--config", EXAMPLE_CONFIG, "--split", "val", "--out", out,
                            "--opts", *opts]) == 0
    err = capsys.readouterr().err
    assert f"its architecture {TINY_MODEL} replaces model.clip ViT-B-32-quickgelu" in err
    assert "PDM is on in it: model.pdm.enabled False replaced" in err
    assert export.main([path, str(tmp_path / "export"), "--config", EXAMPLE_CONFIG]) == 0
    exported = str(tmp_path / "metrics_export.json")
    assert evaluation.main(["--checkpoint", str(tmp_path / "export"), "--split", "val", "--out", exported,
                            "--opts", *tiny_overrides()]) == 0
    assert json.load(open(exported)) == json.load(open(out))
    sheet = str(tmp_path / "sheet.html")
    assert show.main([path, "--config", EXAMPLE_CONFIG, "--split", "val", "--queries", "2", "--out", sheet]) == 0
    assert "<img" in open(sheet).read()
    assert load_config(EXAMPLE_CONFIG).model.pretrained is None
    with pytest.raises(ICSDError):
        config_for_weights(load_checkpoint_or_export(path), path, None, [])
