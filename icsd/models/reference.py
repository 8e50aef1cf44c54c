"""The checkpoints the ICSD and CUSA authors released: recognised by their layout, converted to this model's.

Their ``torch.save`` holds ``{"model": state_dict, "config": their YAML dict, "epoch", "best", "best_epoch"}``:

- OpenAI CLIP under ``clip_model.`` (open_clip's key names for OpenAI models; the weights may be fp16);
- each modality's PDM ``ln_cross_{image,text}_projection.scale_param`` (the log of the per-dimension scale) and
  ``.layernorm.{weight,bias}``, or a plain LayerNorm ``ln_cross_*_projection.{weight,bias}`` with PDM off; the
  heads ``cross_{image,text}_projection.{weight,bias}``;
- temperatures as values: ``tau``; ``cross_tau`` (or ``cross_tau_image`` / ``cross_tau_text``);
  ``cross_the_softlabel_tau``;
- CUSA's ``ln_uni_{image,text}_projection.*``, ``uni_{image,text}_projection.*``, ``uni_tau_image`` and
  ``uni_tau_text``.

``config["clip_model"]`` names the architecture (``ViT-B/32``, ``ViT-L/14@336px``: OpenAI's, so QuickGELU); PDM is
on exactly when the ``scale_param`` keys are there. CLIP's own ``logit_scale`` is unused by the method and
dropped. Every other key must find its place: one left over on either side is named (``load_model_weights``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import torch

from icsd.errors import CheckpointError

# Their config's clip_model -> the open_clip model (OpenAI weights use QuickGELU).
ARCHITECTURES = {"ViT-B/32": "ViT-B-32-quickgelu", "ViT-B/16": "ViT-B-16-quickgelu",
                 "ViT-L/14": "ViT-L-14-quickgelu", "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
                 "RN50": "RN50-quickgelu", "RN101": "RN101-quickgelu"}
# (pattern of their key, this model's key as a template of the pattern's groups); None: dropped on purpose
KEY_MAP = [
    (r"clip_model\.logit_scale", None),
    (r"clip_model\.(.+)", "clip.{0}"),
    (r"ln_cross_(image|text)_projection\.scale_param", "{0}_head.0.log_scale"),
    (r"ln_cross_(image|text)_projection\.layernorm\.(weight|bias)", "{0}_head.0.norm.{1}"),
    (r"ln_cross_(image|text)_projection\.(weight|bias)", "{0}_head.0.{1}"),
    (r"cross_(image|text)_projection\.(weight|bias)", "{0}_head.1.{1}"),
    (r"ln_uni_(image|text)_projection\.(weight|bias)", "loss_heads.uni_{0}.0.{1}"),
    (r"uni_(image|text)_projection\.(weight|bias)", "loss_heads.uni_{0}.1.{1}"),
    (r"tau", "temperatures.tau.value"),
    (r"cross_tau", "temperatures.tau_s.value"),
    (r"cross_tau_image", "temperatures.tau_s_i2t.value"),
    (r"cross_tau_text", "temperatures.tau_s_t2i.value"),
    (r"cross_the_softlabel_tau", "temperatures.tau_t.value"),
    (r"uni_tau_image", "temperatures.tau_u_img.value"),
    (r"uni_tau_text", "temperatures.tau_u_txt.value"),
]


@dataclass
class Reference:
    """A released checkpoint converted: this model's weights, and what they say of the model."""

    weights: dict
    clip: Optional[str]  # the open_clip architecture its config names (None: it names none)
    pdm: bool
    uni_modal: bool  # CUSA's uni-modal heads are there
    unplaced: list  # their keys with no place in this model's layout


def is_reference_layout(state: dict) -> bool:
    weights = state.get("model")
    return isinstance(weights, dict) and any(str(k).startswith("clip_model.") for k in weights)


def _convert_key(key: str) -> tuple[bool, Optional[str]]:
    """(whether the key is known, this model's key or None for a key dropped on purpose)."""
    for pattern, template in KEY_MAP:
        match = re.fullmatch(pattern, key)
        if match:
            return True, None if template is None else template.format(*match.groups())
    return False, None


def _architecture(config: dict, source: str) -> Optional[str]:
    name = config.get("clip_model") if isinstance(config, dict) else None
    if name is None:
        return None
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if str(name).endswith(".json") and os.path.isfile(str(name)):
        return str(name)
    raise CheckpointError(f"{source}: its config's clip_model {name!r} is none of the architectures of the "
                          f"released checkpoints ({', '.join(ARCHITECTURES)})")


def convert(state: dict, source: str) -> Reference:
    """The released checkpoint ``state`` in this model's layout (float32 weights)."""
    weights, unplaced = {}, []
    for key, tensor in state["model"].items():
        known, ours = _convert_key(str(key))
        if not known:
            unplaced.append(str(key))
        elif ours is not None:
            weights[ours] = tensor.float() if torch.is_floating_point(tensor) else tensor
    if any(k.endswith("_softlabel_tau_image") or k.endswith("_softlabel_tau_text") for k in state["model"]):
        raise CheckpointError(f"{source}: per-modality soft-label teacher temperatures (cross_the_softlabel_tau_image"
                              f"/_text) have no place in this model, which has one teacher temperature")
    return Reference(weights, _architecture(state.get("config") or {}, source),
                     pdm="image_head.0.log_scale" in weights, uni_modal="loss_heads.uni_image.1.weight" in weights,
                     unplaced=unplaced)
