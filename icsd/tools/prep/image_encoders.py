"""Image teachers behind one interface: open_clip, timm or Unicom, pooled embedding or patch tokens.

``build_image_encoder(backend, model, pretrained, mode)`` gives an ``ImageEncoder``: the model's own
eval transform and ``encode(images) -> [B, D]`` (no grad), where D is

- ``pooled``: the model's image embedding (open_clip ``encode_image``, unnormalised; timm's pooled
  pre-logits features; Unicom's embedding);
- ``tokens``: the final patch tokens (after the final norm, without class/prefix tokens), flattened
  token-major ``[N * C]``, e.g. 49 x 768 = 37,632 for a ViT-B/32 at 224 px (the released layout).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from icsd.errors import CheckpointError, ConfigError

BACKENDS = ("open_clip", "timm", "unicom")
MODES = ("pooled", "tokens")


@dataclass
class ImageEncoder:
    model: nn.Module
    transform: Callable            # PIL image -> [3, H, W] tensor, the model's eval transform
    forward: Callable              # [B, 3, H, W] -> [B, D] or [B, N, C] (tokens before flattening)
    meta: dict = field(default_factory=dict)  # backend, model, pretrained, mode (for the sidecar)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, D] float32 features; token grids are flattened token-major."""
        with torch.no_grad():
            out = self.forward(images)
        return out.float().reshape(out.shape[0], -1)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown feature mode {mode!r} (choose from {', '.join(MODES)})")


def build_open_clip(model: str, pretrained: Optional[str], mode: str, force_quick_gelu: bool = False) -> ImageEncoder:
    """Any open_clip model name or model-config JSON; ``pretrained``: tag, local weights file or None."""
    from icsd.config import ModelConfig
    from icsd.models.backbone import build_backbone

    backbone = build_backbone(ModelConfig(clip=model, pretrained=pretrained, force_quick_gelu=force_quick_gelu))
    clip = backbone.clip.eval()

    def pooled(images):
        return clip.encode_image(images)

    def tokens(images):
        out = clip.forward_intermediates(image=images, image_indices=1, normalize_intermediates=True,
                                         intermediates_only=True, image_output_fmt="NLC")
        return out["image_intermediates"][-1]

    return ImageEncoder(clip, backbone.transform, pooled if mode == "pooled" else tokens)


def build_timm(model: str, pretrained: Optional[str], mode: str) -> ImageEncoder:
    """Any timm model name (``arch.tag`` allowed); ``pretrained``: None (random init), ``hub`` (timm's
    own weights, downloaded or cached) or a local weights file."""
    import timm

    hub = model.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    if not hub and not timm.is_model(model.split(".")[0]):
        raise ConfigError(f"unknown timm model {model!r} (see timm.list_models())")
    kwargs: dict = {"num_classes": 0}
    if pretrained == "hub":
        kwargs["pretrained"] = True
    elif pretrained:
        if not os.path.isfile(pretrained):
            raise CheckpointError(f"timm weights file not found: {pretrained} (use 'hub' for timm's own weights)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": pretrained})
    try:
        net = timm.create_model(model, **kwargs).eval()
    except RuntimeError as exc:
        raise CheckpointError(f"could not load timm model {model!r} with weights {pretrained!r} ({exc})") from None
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(net), is_training=False)
    prefix = int(getattr(net, "num_prefix_tokens", 0) or 0)

    def tokens(images):
        feats = net.forward_features(images)
        if feats.ndim == 4:  # a CNN feature map [B, C, H, W] -> [B, H*W, C]
            return feats.flatten(2).transpose(1, 2)
        return feats[:, prefix:]

    return ImageEncoder(net, transform, net if mode == "pooled" else tokens)


def build_unicom(model: str, pretrained: Optional[str], mode: str) -> ImageEncoder:
    """A Unicom model (``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``, ``ViT-L/14@336px``) via ``unicom.load``;
    ``pretrained`` may name the folder holding its downloaded weights. Needs the ``unicom`` package."""
    try:
        import unicom
    except ImportError:
        raise ConfigError("backend 'unicom' needs the 'unicom' package, which is not installed: install it "
                          "from its repository (deepglint/unicom), or use --backend open_clip/timm") from None
    kwargs = {"download_root": pretrained} if pretrained else {}
    try:
        net, transform = unicom.load(model, **kwargs)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"unicom.load({model!r}) failed ({exc})") from None
    net = net.float().eval()
    if mode == "tokens" and not hasattr(net, "forward_features"):
        raise ConfigError(f"this unicom model {model!r} has no forward_features(), so no patch tokens")
    return ImageEncoder(net, transform, net if mode == "pooled" else net.forward_features)


def build_image_encoder(backend: str, model: str, pretrained: Optional[str] = None, mode: str = "pooled",
                        device: str = "cpu", seed: int = 0, force_quick_gelu: bool = False) -> ImageEncoder:
    """Build the encoder on ``device``; ``seed`` fixes a random initialisation (``pretrained`` None)."""
    _check_mode(mode)
    torch.manual_seed(seed)
    if backend == "open_clip":
        encoder = build_open_clip(model, pretrained, mode, force_quick_gelu)
    elif backend == "timm":
        encoder = build_timm(model, pretrained, mode)
    elif backend == "unicom":
        encoder = build_unicom(model, pretrained, mode)
    else:
        raise ConfigError(f"unknown image backend {backend!r} (choose from {', '.join(BACKENDS)})")
    encoder.model.to(device)
    encoder.meta = {"backend": backend, "model": str(model), "pretrained": pretrained, "mode": mode}
    if pretrained is None:
        encoder.meta["seed"] = seed
    return encoder
