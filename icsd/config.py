"""Typed, validated configuration (SPEC section 8).

A YAML file maps onto the nested dataclasses below. Every key is checked: an unknown or misspelled key
stops with a message naming the key, its section and the file, and suggests the closest valid key; a
value of the wrong type stops with the expected type. ``--opts section.key=value`` overrides go through
the same validation. Defaults are the reference settings.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from icsd import files
from icsd.errors import ConfigError


# ----------------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    root: str = "datasets/coco"
    annotation: str = "{split}.json"
    image_features: str = "{split}_unicom.npy"
    text_features: str = "{split}_mpnet.npy"
    text_teacher: Optional[str] = "all-mpnet-base-v2"
    text_teacher_source: Optional[str] = None  # load the teacher from here (a local copy); the name is recorded
    text_teacher_batch_size: int = 256
    max_words: int = 64
    num_workers: int = 8
    train_split: str = "train"
    image_root: Optional[str] = None  # prepared image cache for the training loader (relative to root); null: originals


@dataclass
class PDMConfig:
    enabled: bool = True
    scale_init: float = 0.1
    temperature: float = 1.0
    eps: float = 1.0e-6


@dataclass
class ModelConfig:
    clip: str = "ViT-B-32-quickgelu"
    pretrained: Optional[str] = "openai"
    force_quick_gelu: bool = False
    pdm: PDMConfig = field(default_factory=PDMConfig)
    head_init_std: float = 0.02


@dataclass
class TemperatureConfig:
    """A loss temperature: initial value, clamp range (applied after every optimizer step), learnability.

    Mapped one to one onto ``icsd.models.temperature.Temperature``. In YAML its four values are keys of the
    loss section that owns it (``tau``, ``tau_min``, ``tau_max``, ``learn_tau``: the users' keys of SPEC
    section 8), named by the field's ``yaml_keys`` metadata.
    """

    init: float
    min: float
    max: float
    learnable: bool


TEMPERATURE_PARTS = ("init", "min", "max", "learnable")


def temperature(keys: tuple[str, str, str, str], init: float, lo: float, hi: float, learnable: bool):
    """A TemperatureConfig field stored in YAML under the four ``keys`` (init, min, max, learnable)."""
    return field(default_factory=lambda: TemperatureConfig(init, lo, hi, learnable),
                 metadata={"yaml_keys": dict(zip(TEMPERATURE_PARTS, keys))})


@dataclass
class ContrastiveConfig:
    weight: float = 1.0
    mode: Literal["mean", "sum"] = "mean"
    temperature: TemperatureConfig = temperature(("tau", "tau_min", "tau_max", "learn_tau"), 0.05, 0.01, 0.10, True)


@dataclass
class SoftLabelConfig:
    weight: float = 0.15
    kind: Literal["kl", "ce"] = "kl"
    mode: Literal["mean", "sum"] = "mean"  # reduction of kind: ce (as the contrastive modes)
    alpha: float = 0.3
    detach_internal: bool = False
    student: TemperatureConfig = temperature(("tau", "tau_min", "tau_max", "learn_tau"), 0.45, 0.10, 0.99, True)
    shared_tau: bool = True
    teacher: TemperatureConfig = temperature(("teacher_tau", "teacher_tau_min", "teacher_tau_max",
                                              "learn_teacher_tau"), 1.0, 0.10, 1.00, False)


@dataclass
class LossConfig:
    gather_features: bool = False
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    soft_label: SoftLabelConfig = field(default_factory=SoftLabelConfig)


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1.0e-5
    weight_decay: float = 1.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8


@dataclass
class SchedulerConfig:
    name: Literal["cosine", "tanh", "poly"] = "cosine"
    min_lr: float = 1.0e-6
    warmup_epochs: int = 0
    warmup_lr: float = 1.0e-5
    step_on_epochs: bool = False  # false: the cosine is updated every optimizer step


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    precision: Literal["fp32", "amp_bf16", "amp_fp16"] = "amp_bf16"
    grad_clip: Optional[float] = None
    grad_checkpointing: bool = False
    accum_steps: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    log_every: int = 20
    save_every: int = 0  # also keep checkpoint_epoch{N}.pth every N epochs; 0 = only best and last
    checkpoint_every_steps: int = 0  # write a recovery checkpoint every N optimizer steps; 0 = off
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    wandb_project: str = "icsd"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dist_timeout_minutes: float = 30.0  # collectives' timeout (rank 0 may build the text cache meanwhile)


@dataclass
class EvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val", "test"])
    select_on: str = "val"
    select_metric: Literal["r_mean", "rsum", "txt_r_mean", "img_r_mean", "txt_r1", "txt_r5", "txt_r10",
                           "img_r1", "img_r5", "img_r10"] = "r_mean"
    image_batch_size: int = 128
    text_batch_size: int = 256
    eval_before_training: bool = False
    fold_size: int = 1000  # COCO 1K test: the mean over folds of fold_size consecutive images ...
    folds_when_images: Optional[int] = 5000  # ... reported (as 1k_*) for a split of this many images
    rank_chunk_size: int = 1024  # queries ranked at a time: memory ~ rank_chunk_size x candidates x 4 bytes


@dataclass
class Config:
    output_dir: str = "output/vitb32/coco/icsd"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> str:
        """The output folder with the seed appended, as the reference: ``icsd`` -> ``icsd_seed42``."""
        return f"{self.output_dir.rstrip('/')}_seed{self.seed}"


# ----------------------------------------------------------------------------------------------------
# Building and validation
# ----------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` checked against the annotation ``tp``; raise ConfigError if it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # a schema bug, not a user error


def _yaml_keys(cls: type) -> dict[str, tuple[str, Optional[str]]]:
    """The YAML keys of a section: key -> (field, part of a flattened TemperatureConfig or None)."""
    keys: dict[str, tuple[str, Optional[str]]] = {}
    for f in dataclasses.fields(cls):
        flat = f.metadata.get("yaml_keys")
        keys.update({key: (f.name, part) for part, key in flat.items()} if flat else {f.name: (f.name, None)})
    return keys


def _build(cls: type, raw: Any, section: str, source: str) -> Any:
    label = f"section '{section}'" if section else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {label} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    keys = _yaml_keys(cls)
    for key in raw:
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(keys)}"
            raise ConfigError(f"{source}: unknown key '{key}' in {label}{hint}")

    def where(key: str) -> str:
        return f"{source}: key '{section}.{key}'" if section else f"{source}: key '{key}'"

    values = {}
    for f in dataclasses.fields(cls):
        tp, flat = hints[f.name], f.metadata.get("yaml_keys")
        if flat:  # a TemperatureConfig whose parts are keys of this section
            default, part_types = f.default_factory(), typing.get_type_hints(tp)
            values[f.name] = tp(**{part: _coerce(raw[key], part_types[part], where(key)) if key in raw
                                   else getattr(default, part) for part, key in flat.items()})
        elif dataclasses.is_dataclass(tp):
            values[f.name] = _build(tp, raw.get(f.name), f"{section}.{f.name}" if section else f.name, source)
        elif f.name in raw:
            values[f.name] = _coerce(raw[f.name], tp, where(f.name))
    return cls(**values)


def _temperatures(node: Any, section: str = ""):
    """Every TemperatureConfig of the config tree: (section, its YAML keys by part, the config)."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if f.metadata.get("yaml_keys"):
            yield section, f.metadata["yaml_keys"], value
        elif dataclasses.is_dataclass(value):
            yield from _temperatures(value, f"{section}.{f.name}" if section else f.name)


def _check_ranges(cfg: Config, source: str) -> None:
    """Value ranges; a violation names the key and its value (``train.batch_size = -32 must be >= 1``)."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {msg}")

    def at_least(key: str, bound: float, strict: bool = False) -> None:
        value = _get(cfg, key)
        need(value > bound if strict else value >= bound,
             f"{key} = {value!r} must be {'>' if strict else '>='} {bound}")

    for section, keys, t in _temperatures(cfg):
        k = {part: f"{section}.{key}" for part, key in keys.items()}
        need(t.min > 0, f"{k['min']} = {t.min!r} must be > 0")
        need(t.min <= t.init <= t.max, f"{k['init']} = {t.init!r} must lie in [{keys['min']}, {keys['max']}] = "
                                       f"[{t.min!r}, {t.max!r}] (0 < {keys['min']} <= {keys['init']} <= {keys['max']})")
    alpha = cfg.loss.soft_label.alpha
    need(0.0 <= alpha <= 1.0, f"loss.soft_label.alpha = {alpha!r} must be in [0, 1]")
    for key in ("loss.contrastive.weight", "loss.soft_label.weight", "train.save_every",
                "train.checkpoint_every_steps", "data.num_workers", "train.optimizer.lr",
                "train.optimizer.weight_decay", "train.scheduler.min_lr", "train.scheduler.warmup_epochs"):
        at_least(key, 0)
    for key in ("train.epochs", "train.batch_size", "train.accum_steps", "train.log_every", "eval.image_batch_size",
                "eval.text_batch_size", "eval.fold_size", "eval.rank_chunk_size", "data.max_words",
                "data.text_teacher_batch_size"):
        at_least(key, 1)
    for key in ("model.pdm.scale_init", "model.pdm.temperature", "train.dist_timeout_minutes"):
        at_least(key, 0, strict=True)
    if cfg.train.grad_clip is not None:
        at_least("train.grad_clip", 0, strict=True)
    need(not cfg.eval.splits or cfg.eval.select_on in cfg.eval.splits,
         f"eval.select_on '{cfg.eval.select_on}' must be one of eval.splits {cfg.eval.splits}")
    from timm.optim import list_optimizers

    need(cfg.train.optimizer.name in list_optimizers(),
         f"train.optimizer.name '{cfg.train.optimizer.name}' is not a timm optimizer "
         f"(closest: {difflib.get_close_matches(cfg.train.optimizer.name, list_optimizers(), n=3)})")
    for key in ("annotation", "image_features", "text_features"):
        pattern = getattr(cfg.data, key)
        need("{split}" in pattern, f"data.{key} '{pattern}' must contain '{{split}}'")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def config_from_dict(raw: dict, source: str = "<config>") -> Config:
    cfg = _build(Config, raw, "", source)
    _check_ranges(cfg, source)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` -> (["train", "epochs"], 2). The value is parsed as YAML; text that is not
    valid YAML (``new_{split}.json``) is taken as a string."""
    if "=" not in text:
        raise ConfigError(f"bad override '{text}': expected section.key=value")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"bad override '{text}': empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return path, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides or []:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"bad override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return raw


BASE_KEY = "_base_"


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str, _seen: tuple = ()) -> dict:
    """A YAML mapping; ``_base_: other.yaml`` (relative to this file) is read first and deep-merged under it."""
    if os.path.abspath(path) in _seen:
        raise ConfigError(f"{path}: '{BASE_KEY}' chain loops back to itself")
    raw = files.read_yaml(path, "config file", ConfigError) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a path to another YAML file")
    base_path = os.path.join(os.path.dirname(path), base)
    return _deep_merge(read_config_file(base_path, _seen + (os.path.abspath(path),)), raw)


def load_config(path: Optional[str], overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML file (or only defaults when ``path`` is None), apply ``--opts`` overrides, validate."""
    raw = read_config_file(path) if path is not None else {}
    source = path if path is not None else "<defaults>"
    if overrides:
        raw = apply_overrides(raw, overrides)
        source = f"{source} (with --opts {' '.join(overrides)})"
    return config_from_dict(raw, source)


def config_to_dict(cfg: Any) -> dict:
    """The config as its YAML mapping (the users' keys: temperatures flattened into their sections)."""
    out: dict = {}
    for f in dataclasses.fields(cfg):
        value, flat = getattr(cfg, f.name), f.metadata.get("yaml_keys")
        if flat:
            out.update({key: getattr(value, part) for part, key in flat.items()})
        elif dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, list) else value
    return out


