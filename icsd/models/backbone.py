"""The open_clip backbone: model, eval transform and tokenizer from a name or a model-config JSON."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import open_clip
from torch import nn

from icsd.config import ModelConfig
from icsd.data.pixels import PixelTransform, split_transform
from icsd.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)


@dataclass
class Backbone:
    clip: nn.Module
    embed_dim: int
    transform: Callable  # the backbone's eval transform (resize, centre crop, normalise): PIL -> float tensor
    tokenizer: Callable

    @cached_property
    def pixels(self) -> PixelTransform:
        """The same transform split: uint8 in the loader, normalised on the device."""
        return split_transform(self.transform)


def resolve_model_name(clip: str) -> str:
    """An open_clip model name, or a path to a model-config JSON registered under its file stem."""
    if clip.endswith(".json"):
        if not os.path.isfile(clip):
            raise ConfigError(f"model.clip: model config file not found: {clip}")
        open_clip.add_model_config(clip)
        return os.path.splitext(os.path.basename(clip))[0]
    if open_clip.get_model_config(clip) is None and not clip.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(f"model.clip: unknown open_clip model '{clip}' "
                          f"(see open_clip.list_models(), or give a path to a model-config .json)")
    return clip


def _check_pretrained(name: str, pretrained: str) -> None:
    if os.path.isfile(pretrained):
        return
    if pretrained in open_clip.list_pretrained_tags_by_model(name):
        return
    looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path:
        raise CheckpointError(f"model.pretrained: weights file not found: {pretrained}")
    raise ConfigError(f"model.pretrained: '{pretrained}' is neither a file nor a pretrained tag of '{name}' "
                      f"(tags: {open_clip.list_pretrained_tags_by_model(name)})")


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded ... Model initialized randomly" whenever it builds a
    model without weights, also when trained weights are loaded right after: the project says it itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def build_backbone(cfg: ModelConfig, weights_follow: bool = False) -> Backbone:
    """The open_clip model, transform and tokenizer. ``weights_follow``: the caller loads trained weights into
    it next (so nothing is downloaded and nothing is said); else a random initialisation is said in one line."""
    name = resolve_model_name(cfg.clip)
    if cfg.pretrained:
        _check_pretrained(name, cfg.pretrained)
    elif not weights_follow:
        logger.info(f"model.pretrained is null: {name} starts from a random initialisation")
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)  # open_clip logs through the root logger
    try:
        clip, _, transform = open_clip.create_model_and_transforms(
            name, pretrained=cfg.pretrained, force_quick_gelu=cfg.force_quick_gelu)
    except RuntimeError as exc:
        if cfg.pretrained and not os.path.isfile(cfg.pretrained):
            raise CheckpointError(
                f"could not get pretrained weights '{cfg.pretrained}' for '{name}' ({exc}). Without network "
                f"access, download them elsewhere (e.g. open_clip.create_model('{name}', "
                f"pretrained='{cfg.pretrained}') fills the Hugging Face cache) and set model.pretrained to "
                f"the local weights file.") from None
        raise
    finally:
        logging.getLogger().removeFilter(quiet)
    model_cfg = open_clip.get_model_config(name)
    embed_dim = int(model_cfg["embed_dim"]) if model_cfg else int(clip.text_projection.shape[1])
    return Backbone(clip, embed_dim, transform, open_clip.get_tokenizer(name))
