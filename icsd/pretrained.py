"""Load an exported model folder (``python -m icsd.export``): ``model.safetensors`` + ``config.yaml``.

    import icsd
    model = icsd.load_pretrained("exports/icsd_coco")   # an ICSDModel in eval mode, on CPU

Only the model code is imported here (no trainer, engine or optimizer), and no pretrained weights are
downloaded: the model is built with random init from the exported config, then loaded strictly.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional

from icsd.errors import CheckpointError, ICSDError
from icsd.files import read_json, read_yaml

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from icsd.config import Config

WEIGHTS, CONFIG, INFO = "model.safetensors", "config.yaml", "export.json"
FORMAT, FORMAT_VERSION = "icsd-export", 1


class ExportError(CheckpointError):
    """A missing, partial or corrupted export folder."""


def _read_mapping(folder: str, name: str, read, kind: str, missing_hint: str = ""):
    """A mapping read from ``folder/name`` by ``icsd.files``' reader ``read``, or one ExportError."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise ExportError(f"{folder} is not a complete ICSD export: {name} is missing{missing_hint}")
    value = read(path, name, ExportError)
    if not isinstance(value, dict):
        raise ExportError(f"{folder}: {name} is not a {kind} mapping")
    return value


def read_export_config(folder: str) -> dict:
    """The exported config as a dict (the resolved config, ``model.pretrained`` null)."""
    return _read_mapping(folder, CONFIG, read_yaml, "YAML")


def read_export_info(folder: str) -> dict:
    info = _read_mapping(folder, INFO, read_json, "JSON", " (interrupted export?)")
    if info.get("format") != FORMAT:
        raise ExportError(f"{folder}: {INFO} does not describe an ICSD export")
    if info.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{folder}: export format version {info.get('format_version')} is not supported "
                          f"(this code reads version {FORMAT_VERSION})")
    return info


def read_export_weights(folder: str, info: dict) -> dict:
    """The state dict, with the file's size checked against the export record first (a truncated copy
    is named as such rather than as a parse error)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(folder, WEIGHTS)
    if not os.path.isfile(path):
        raise ExportError(f"{folder} is not a complete ICSD export: {WEIGHTS} is missing")
    expected = info.get("weights_bytes")
    if expected is not None and os.path.getsize(path) != expected:
        raise ExportError(f"{folder}: {WEIGHTS} has {os.path.getsize(path)} bytes, the export wrote {expected} "
                          f"(truncated or corrupted copy)")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ExportError(f"{folder}: {WEIGHTS} is not a readable safetensors file ({exc})") from None


def read_export(folder: str) -> dict:
    """``{"model": state_dict, "config": dict, "export": info}``: what a checkpoint holds for evaluation."""
    if not os.path.isdir(folder):
        raise ExportError(f"export folder not found: {folder}")
    info = read_export_info(folder)
    config = read_export_config(folder)
    return {"model": read_export_weights(folder, info), "config": config, "export": info,
            "epoch": info.get("epoch")}


def load_checkpoint_or_export(path: str, key: str = "checkpoint") -> dict:
    """A ``.pth`` checkpoint's dict, or an export folder read as one (``model`` and ``config`` entries).
    ``key``: how the user named the path, for the message when it is neither."""
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, name)) for name in (INFO, WEIGHTS)):
            raise CheckpointError(f"{key}: {path} is a folder but not an ICSD export (no {INFO}, no {WEIGHTS}): "
                                  f"give a checkpoint file (.pth) or a folder written by python -m icsd.export")
        return read_export(path)
    from icsd.checkpoint import load_checkpoint
    from icsd.models.reference import convert, is_reference_layout

    state = load_checkpoint(path, key)
    if not is_reference_layout(state):
        return state
    reference = convert(state, path)
    if reference.unplaced:
        raise CheckpointError(f"{path} (a released ICSD/CUSA checkpoint) has keys with no place in this model: "
                              f"{', '.join(reference.unplaced)}")
    return {"model": reference.weights, "config": None, "reference": reference, "epoch": state.get("epoch")}


def config_for_weights(state: dict, path: str, config: Optional[str], opts) -> Config:
    """The config to use with the weights read from ``path``: the YAML file ``config`` when given, else the one
    saved with them; ``opts`` (``key=value``) override either."""
    from icsd.config import apply_overrides, config_from_dict, load_config

    if state.get("reference") is not None:
        if config is None:
            raise ICSDError(f"{path} is a checkpoint released by the ICSD or CUSA authors: its config holds their "
                            f"machine's paths. Give --config for the data and evaluation settings (e.g. "
                            f"configs/vitb32/coco/icsd.yaml, or cusa.yaml for a CUSA checkpoint)")
        return fit_to_reference(load_config(config, list(opts)), state["reference"], path)
    if config is not None:
        return load_config(config, list(opts))
    if state.get("config") is not None:
        return config_from_dict(apply_overrides(state["config"], list(opts)), f"config saved in {path}")
    raise ICSDError(f"{path} holds no config: pass --config")


def fit_to_reference(cfg: Config, reference, path: str) -> Config:
    """The architecture and PDM come from a released checkpoint, the rest from ``cfg``; every disagreement with
    ``cfg`` is named in a line, and a loss-term layout that cannot fit (CUSA's heads) is an error."""
    import dataclasses

    model = cfg.model
    if reference.clip is not None and reference.clip != model.clip:
        logger.warning(f"{path}: its architecture {reference.clip} replaces model.clip {model.clip}")
        model = dataclasses.replace(model, clip=reference.clip)
    if reference.pdm != model.pdm.enabled:
        logger.warning(f"{path}: PDM is {'on' if reference.pdm else 'off'} in it: model.pdm.enabled "
                       f"{model.pdm.enabled} replaced")
        model = dataclasses.replace(model, pdm=dataclasses.replace(model.pdm, enabled=reference.pdm))
    if model.heads != "linear":
        logger.warning(f"{path}: it has cross-modal heads: model.heads {model.heads} replaced by linear")
        model = dataclasses.replace(model, heads="linear")
    uni = "uni_modal" in cfg.loss.terms and cfg.loss.uni_modal.weight > 0
    if reference.uni_modal != uni:
        has, use = ("has", "with") if reference.uni_modal else ("has no", "without")
        raise CheckpointError(f"{path} {has} CUSA's uni-modal heads: use a config {use} loss.uni_modal "
                              f"(configs/vitb32/coco/cusa.yaml is one with it)")
    return dataclasses.replace(cfg, model=dataclasses.replace(model, pretrained=None))


def load_pretrained(folder: str, device: Optional[str] = "cpu"):
    """The exported ICSDModel, weights loaded strictly, in eval mode on ``device``."""
    import torch

    from icsd.config import config_from_dict
    from icsd.distributed import DistEnv
    from icsd.models import build_model_for

    state = read_export(folder)
    raw = state["config"]
    raw.setdefault("model", {})["pretrained"] = None  # never download: the weights are in the folder
    try:
        cfg = config_from_dict(raw, f"{folder}/{CONFIG}")
    except ICSDError as exc:
        raise ExportError(f"{folder}: {CONFIG} is not a valid config ({exc})") from None
    try:
        model, _ = build_model_for(cfg, DistEnv(device=torch.device(device)), state["model"], f"{folder}/{WEIGHTS}")
    except CheckpointError as exc:
        raise ExportError(f"{folder}: the weights do not fit its {CONFIG}: {exc}") from None
    return model.eval()
