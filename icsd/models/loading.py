"""Building the configured model on its device, with weights from a checkpoint when given."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from torch import nn

from icsd.config import Config
from icsd.distributed import DistEnv
from icsd.errors import CheckpointError
from icsd.models.backbone import Backbone
from icsd.models.icsd_model import OPEN_CLIP_LOSS_PARAMETERS, ICSDModel, build_model

logger = logging.getLogger(__name__)


def load_model_weights(model: nn.Module, weights: dict, source: str) -> None:
    """``load_state_dict`` with a CheckpointError naming the mismatching keys (e.g. PDM on vs off). A temperature
    the model does not have is skipped: checkpoints of runs before the loss terms became plug-ins hold the
    frozen temperatures of terms that were off (a contrastive run's ``tau_s``, ``tau_t``). open_clip's own loss
    scale, unused and frozen, keeps the model's value when the weights have none."""
    own = model.state_dict()
    unused = sorted(k for k in weights if k not in own and k.startswith("temperatures.") and k.endswith(".value"))
    if unused:
        logger.info(f"{source}: not loaded, the temperatures of terms this config does not use: {_listed(unused)}")
    weights = {k: v for k, v in weights.items() if k not in unused}
    for name in OPEN_CLIP_LOSS_PARAMETERS:  # unused (and frozen) here; the released checkpoints drop them
        if f"clip.{name}" in own and f"clip.{name}" not in weights:
            weights[f"clip.{name}"] = own[f"clip.{name}"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        raise CheckpointError(f"{source} does not fit the configured model (missing {_listed(missing)}, unexpected "
                              f"{_listed(unexpected)}{'' if missing or unexpected else f': {exc}'}); is the config "
                              f"the one it was trained with?") from None


def _listed(keys: list[str], most: int = 20) -> str:
    return "[" + ", ".join(keys[:most]) + (f", ... {len(keys) - most} more" if len(keys) > most else "") + "]"


def build_model_for(cfg: Config, env: DistEnv, weights: Optional[dict] = None,
                    source: str = "checkpoint") -> tuple[ICSDModel, Backbone]:
    """The model on its device, with ``weights`` when given (then no pretrained weights are downloaded)."""
    if weights is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None))
    model, backbone = build_model(cfg, weights_follow=weights is not None)
    if weights is not None:
        load_model_weights(model, weights, source)
    return model.to(env.device), backbone
