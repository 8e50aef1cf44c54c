"""Typed, validated configuration (docs/config.md).

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
def option(default: Any, doc: str):
    """A config key with its default and its meaning (``docs/config.md`` is generated from these)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def section(cls: type, doc: str):
    """A nested section (its own dataclass) with what it is about."""
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass
class DataConfig:
    root: str = option("datasets/coco", "annotation, image and feature paths are relative to it")
    annotation: str = option("{split}.json", "split file pattern (`new_{split}.json` for the ICSD/CUSA releases)")
    image_features: str = option("{split}_unicom.npy", "image-teacher features, either layout (docs/data.md)")
    text_features: str = option("{split}_mpnet.npy", "text-teacher feature cache (built when missing)")
    text_teacher: Optional[str] = option(
        "all-mpnet-base-v2", "sentence-transformers name or path; builds a missing text cache; `null`: accept "
                             "any teacher's cache, never build one")
    text_teacher_source: Optional[str] = option(
        None, "load the text teacher from here (a local copy) while the cache's sidecar records `text_teacher`")
    text_teacher_batch_size: int = option(256, "batch size when building the text cache")
    max_words: int = option(64, "captions are cut to this many words")
    num_workers: int = option(8, "DataLoader worker processes (training, evaluation, image checks)")
    train_split: str = option("train", "the split trained on")
    image_root: Optional[str] = option(
        None, "prepared JPEG cache read by the training loader (relative to `root`, or absolute; `python -m "
              "icsd.prep resize`); `null`: the original images. Evaluation always decodes the originals")
    pixel_cache: Optional[str] = option(
        None, "decoded-pixel cache per split (`{split}_pixels224.npy`, relative to `root`): training and evaluation "
              "read exact uint8 images from it; built when missing; `null`: decode the images")
    token_cache: Optional[str] = option(None, "token cache per split (`{split}_tokens.npy`): the captions' "
                                              "tokens, built when missing; `null`: tokenize every step")


@dataclass
class PDMConfig:
    enabled: bool = option(True, "PDM -> Linear heads; `false`: LayerNorm -> Linear (the baseline)")
    scale_init: float = option(0.1, "initial per-dimension scale `exp(theta)`")
    temperature: float = option(1.0, "`t` in `S = u u^T / t`")
    eps: float = option(1.0e-6, "epsilon of PDM's LayerNorm")


@dataclass
class ModelConfig:
    clip: str = option("ViT-B-32-quickgelu", "any open_clip model name, or a path to an open_clip model-config "
                                            "`.json`")
    pretrained: Optional[str] = option("openai", "open_clip tag, local weights file, or `null` (random init)")
    force_quick_gelu: bool = option(False, "QuickGELU for OpenAI weights under a name without `-quickgelu`")
    heads: Literal["linear", "none"] = option(
        "linear", "cross-modal heads: `linear` (PDM or LayerNorm -> Linear); `none`: CLIP's own embeddings (the "
                  "plain fine-tune; PDM needs heads)")
    pdm: PDMConfig = section(PDMConfig, "feature separation before the cross-modal heads")
    head_init_std: float = option(0.02, "std of the heads' Linear weights (bias 0), the loss terms' heads too")
    lock_image: bool = option(False, "freeze the image tower (open_clip `lock_image_tower`)")
    lock_image_unlocked_groups: int = option(0, "... but train its last N layer groups")
    lock_text: bool = option(False, "freeze the text tower (open_clip `lock_text_tower`)")
    lock_text_unlocked_layers: int = option(0, "... but train its last N layers")


@dataclass
class TemperatureConfig:
    """A loss temperature: initial value, clamp range (applied after every optimizer step), learnability.

    Mapped one to one onto ``icsd.models.temperature.Temperature``. In YAML its four values are flat keys of the
    loss section that owns it (``tau``, ``tau_min``, ``tau_max``, ``learn_tau``), named by the field's
    ``yaml_keys`` metadata.
    """

    init: float
    min: float
    max: float
    learnable: bool


TEMPERATURE_PARTS = ("init", "min", "max", "learnable")


def temperature(keys: tuple[str, str, str, str], init: float, lo: float, hi: float, learnable: bool,
                doc: str = "temperature"):
    """A TemperatureConfig field stored in YAML under the four ``keys`` (init, min, max, learnable)."""
    return field(default_factory=lambda: TemperatureConfig(init, lo, hi, learnable),
                 metadata={"yaml_keys": dict(zip(TEMPERATURE_PARTS, keys)), "doc": doc})


def _default_terms() -> dict:
    """The sections of the built-in terms that are on by default (contrastive, soft_label), with defaults."""
    from icsd.losses.term import term_classes

    return {name: term.config() for name, term in term_classes().items() if term.always_configured}


@dataclass
class LossConfig:
    """``loss:``: ``gather_features``, ``plugins``, and one section per loss term (``icsd.losses``): the
    built-in ``contrastive`` and ``soft_label`` always (defaults when absent), ``uni_modal`` and plug-in terms
    when their section is there. ``cfg.loss.<section>`` reads a term's section."""

    gather_features: bool = option(False, "all-gather features, ids and teacher features (with gradients) so the "
                                          "loss sees the global batch; `false` (the reference): each rank's own")
    plugins: list[str] = option([], "loss terms from outside the package, as import paths `module:Class`")
    terms: dict[str, Any] = field(default_factory=_default_terms)  # section -> its config, in the terms' order

    def __getattr__(self, name: str) -> Any:
        terms = self.__dict__.get("terms")
        if terms is not None and name in terms:
            return terms[name]
        raise AttributeError(f"loss has no section '{name}'")


@dataclass
class OptimizerConfig:
    name: str = option("adamw", "any timm optimizer (`create_optimizer_v2`); no weight decay on parameters with "
                                "ndim <= 1 (biases, norms, PDM scales, temperatures)")
    lr: float = option(1.0e-5, "learning rate")
    weight_decay: float = option(1.0e-4, "weight decay")
    betas: list[float] = option([0.9, 0.999], "Adam betas")
    eps: float = option(1.0e-8, "Adam epsilon")
    head_lr_scale: float = option(1.0, "learning-rate multiplier of the heads (cross-modal and loss terms')")
    pdm_lr_scale: float = option(1.0, "learning-rate multiplier of PDM's parameters")
    temperature_lr_scale: float = option(1.0, "learning-rate multiplier of the temperatures")


@dataclass
class SchedulerConfig:
    name: Literal["cosine", "tanh", "poly"] = option("cosine", "timm `create_scheduler_v2` schedule")
    min_lr: float = option(1.0e-6, "the schedule's final learning rate")
    warmup_epochs: int = option(0, "linear warm-up epochs")
    warmup_lr: float = option(1.0e-5, "learning rate at the start of the warm-up")
    step_on_epochs: bool = option(False, "`false`: the schedule advances every optimizer step; `true`: once per "
                                         "epoch")


@dataclass
class TrainConfig:
    epochs: int = option(30, "training epochs")
    batch_size: int = option(128, "per process: the global batch is this x the number of processes")
    precision: Literal["fp32", "amp_bf16", "amp_fp16"] = option("amp_bf16", "autocast precision (the losses run "
                                                                            "in fp32)")
    grad_clip: Optional[float] = option(None, "max gradient norm; `null`: no clipping")
    grad_checkpointing: bool = option(False, "open_clip's activation checkpointing (less memory, more time)")
    accum_steps: int = option(1, "gradient accumulation: micro-batches per optimizer step")
    optimizer: OptimizerConfig = section(OptimizerConfig, "the optimizer (timm)")
    scheduler: SchedulerConfig = section(SchedulerConfig, "the learning-rate schedule (timm)")
    log_every: int = option(20, "optimizer steps between progress updates, tracker scalars and non-finite loss "
                                "checks (the loss is never read back per step)")
    save_every: int = option(0, "also keep `checkpoint_epoch{N}.pth` (a hard link) every N epochs; 0: only best "
                                "and last")
    checkpoint_every_steps: int = option(0, "write a recovery checkpoint every N optimizer steps; 0: off")
    report_to: list[Literal["tensorboard", "wandb"]] = option([], "trackers: `[tensorboard]`, `[wandb]` or both")
    wandb_project: str = option("icsd", "W&B project of `report_to: [wandb]`")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "`auto`: CUDA when available")
    dist_timeout_minutes: float = option(30.0, "timeout of collectives (the main rank may build a cache meanwhile)")


@dataclass
class ExtraEvalConfig:
    """Another dataset evaluated alongside (transfer evaluation: Flickr30K 1K test for a COCO-trained model)."""

    name: str = option("", "its metrics' prefix in the log, the trackers and the report (`flickr_rsum`)")
    root: str = option("", "its data root (annotation and image paths are relative to it)")
    annotation: str = option("{split}.json", "its split file pattern")
    split: str = option("test", "the split evaluated")


@dataclass
class EvalConfig:
    splits: list[str] = option(["val", "test"], "splits evaluated every epoch (any size: ranking runs in chunks)")
    select_on: str = option("val", "the split that selects `checkpoint_best.pth`")
    select_metric: Literal["r_mean", "rsum", "txt_r_mean", "img_r_mean", "txt_r1", "txt_r5", "txt_r10",
                           "img_r1", "img_r5", "img_r10"] = option("r_mean", "the metric that selects it")
    image_batch_size: int = option(128, "fixed image encoding batches (PDM depends on the batch)")
    text_batch_size: int = option(256, "fixed text encoding batches")
    eval_before_training: bool = option(False, "also evaluate before the first epoch (`epoch: 0` in the log)")
    fold_size: int = option(1000, "COCO 1K test: the mean over folds of this many consecutive images ...")
    folds_when_images: Optional[int] = option(5000, "... reported (as `1k_*`) for a split of this many images; "
                                                    "`null`: never")
    rank_chunk_size: int = option(1024, "queries ranked at a time (memory ~ this x candidates x 4 bytes); results "
                                        "do not depend on it")
    extra: list[ExtraEvalConfig] = option([], "other datasets evaluated every epoch and by evaluation.py, each "
                                              "`{name, root, annotation, split}`; selection stays on `select_on`")


@dataclass
class Config:
    output_dir: str = option("output/vitb32/coco/icsd", "run folder; `_seed{seed}` is appended")
    seed: int = option(42, "seeds Python, NumPy and torch (+ the rank) and the data order")
    data: DataConfig = section(DataConfig, "the data root, its splits and teachers' features")
    model: ModelConfig = section(ModelConfig, "the dual encoder")
    loss: LossConfig = section(LossConfig, "the loss terms, one section each")
    train: TrainConfig = section(TrainConfig, "training")
    eval: EvalConfig = section(EvalConfig, "evaluation and checkpoint selection")

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


def _within(where: str, suffix: str) -> str:
    """``where`` of a list item or an item's key: "key 'eval.extra'" -> "key 'eval.extra[0]'"."""
    return where[:-1] + suffix + "'" if where.endswith("'") else where + suffix


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
        return [_coerce(v, item, _within(where, f"[{i}]")) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):  # an item of a list of sections (eval.extra)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {', '.join(_yaml_keys(tp))}, got {value!r}")
        keys, hints = _yaml_keys(tp), typing.get_type_hints(tp)
        source, _, label = where.rpartition(": key ")
        _check_keys(value, keys, f"the item {label}", source)
        return tp(**{k: _coerce(v, hints[k], _within(where, f".{k}")) for k, v in value.items()})
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


def _check_keys(raw: dict, keys, label: str, source: str) -> None:
    for key in raw:
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(keys)}"
            raise ConfigError(f"{source}: unknown key '{key}' in {label}{hint}")


def _build_loss(raw: dict, source: str) -> LossConfig:
    """``loss:``: its own keys, then one section per term, built-in or plug-in (an unknown section is an error)."""
    from icsd.losses.term import term_classes

    plugins = _coerce(raw.get("plugins", []), list[str], f"{source}: key 'loss.plugins'")
    try:
        classes = term_classes(plugins)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_keys(raw, ["gather_features", "plugins", *classes], "section 'loss'", source)
    terms = {name: _build(term.config, raw.get(name), f"loss.{name}", source)
             for name, term in classes.items() if name in raw or term.always_configured}
    gather = _coerce(raw.get("gather_features", False), bool, f"{source}: key 'loss.gather_features'")
    return LossConfig(gather, plugins, terms)


def _build(cls: type, raw: Any, section: str, source: str) -> Any:
    label = f"section '{section}'" if section else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {label} must be a mapping, got {raw!r}")
    if cls is LossConfig:
        return _build_loss(raw, source)
    hints = typing.get_type_hints(cls)
    keys = _yaml_keys(cls)
    _check_keys(raw, keys, label, source)

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


def _sections(node: Any, section: str = ""):
    """Every section of the config tree, nested ones and loss terms included: (dotted name, its dataclass)."""
    yield section, node
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        child = f"{section}.{f.name}" if section else f.name
        if isinstance(value, dict):  # loss.terms: the term sections, keyed by their YAML names
            for name, term in value.items():
                yield from _sections(term, f"{section}.{name}")
        elif dataclasses.is_dataclass(value) and not f.metadata.get("yaml_keys"):
            yield from _sections(value, child)


def _temperatures(node: Any):
    """Every TemperatureConfig of the config tree: (section, its YAML keys by part, the config)."""
    for section, value in _sections(node):
        for f in dataclasses.fields(value):
            if f.metadata.get("yaml_keys"):
                yield section, f.metadata["yaml_keys"], getattr(value, f.name)


def _check_ranges(cfg: Config, source: str) -> None:
    """Value ranges; a violation names the key and its value (``train.batch_size = -32 must be >= 1``)."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {msg}")

    def at_least(key: str, bound: float, strict: bool = False) -> None:
        value = _get(cfg, key)
        need(value > bound if strict else value >= bound,
             f"{key} = {value!r} must be {'>' if strict else '>='} {bound}")

    for key in ("train.save_every", "train.checkpoint_every_steps", "data.num_workers", "train.optimizer.lr",
                "train.optimizer.weight_decay", "train.scheduler.min_lr", "train.scheduler.warmup_epochs",
                "model.lock_image_unlocked_groups", "model.lock_text_unlocked_layers"):
        at_least(key, 0)
    for key in ("train.epochs", "train.batch_size", "train.accum_steps", "train.log_every", "eval.image_batch_size",
                "eval.text_batch_size", "eval.fold_size", "eval.rank_chunk_size", "data.max_words",
                "data.text_teacher_batch_size"):
        at_least(key, 1)
    for key in ("model.pdm.scale_init", "model.pdm.temperature", "train.dist_timeout_minutes",
                "train.optimizer.head_lr_scale", "train.optimizer.pdm_lr_scale",
                "train.optimizer.temperature_lr_scale"):
        at_least(key, 0, strict=True)
    if cfg.train.grad_clip is not None:
        at_least("train.grad_clip", 0, strict=True)
    _check_loss(cfg, need, source)
    _check_combinations(cfg, need)


def _check_loss(cfg: Config, need, source: str) -> None:
    """Every temperature's range; every loss term's weight and its own checks."""
    for section, keys, t in _temperatures(cfg):
        k = {part: f"{section}.{key}" for part, key in keys.items()}
        need(t.min > 0, f"{k['min']} = {t.min!r} must be > 0")
        need(t.min <= t.init <= t.max, f"{k['init']} = {t.init!r} must lie in [{keys['min']}, {keys['max']}] = "
                                       f"[{t.min!r}, {t.max!r}] (0 < {keys['min']} <= {keys['init']} <= {keys['max']})")
    from icsd.losses.term import term_classes

    classes = term_classes(cfg.loss.plugins)
    for name, section in cfg.loss.terms.items():
        need(section.weight >= 0, f"loss.{name}.weight = {section.weight!r} must be >= 0")
        try:
            classes[name](section).check()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _check_combinations(cfg: Config, need) -> None:
    """Keys valid alone but wrong together, names and patterns."""
    need(not (cfg.model.heads == "none" and cfg.model.pdm.enabled),
         "model.heads: none uses CLIP's own embeddings, with no head to put PDM in front of; set "
         "model.pdm.enabled: false (or model.heads: linear)")
    names = [extra.name for extra in cfg.eval.extra]
    for i, extra in enumerate(cfg.eval.extra):
        need(extra.name.isidentifier() and extra.name not in cfg.eval.splits and names.count(extra.name) == 1,
             f"eval.extra[{i}].name {extra.name!r} must be a name (letters, digits, _), unique, and not one of "
             f"eval.splits {cfg.eval.splits}: it prefixes the dataset's metrics")
        need(bool(extra.root), f"eval.extra[{i}].root: the dataset's data root is needed")
        need("{split}" in extra.annotation, f"eval.extra[{i}].annotation '{extra.annotation}' must contain '{{split}}'")
    need(not cfg.eval.splits or cfg.eval.select_on in cfg.eval.splits,
         f"eval.select_on '{cfg.eval.select_on}' must be one of eval.splits {cfg.eval.splits}")
    from timm.optim import list_optimizers

    need(cfg.train.optimizer.name in list_optimizers(),
         f"train.optimizer.name '{cfg.train.optimizer.name}' is not a timm optimizer "
         f"(closest: {difflib.get_close_matches(cfg.train.optimizer.name, list_optimizers(), n=3)})")
    for key in ("annotation", "image_features", "text_features", "pixel_cache", "token_cache"):
        pattern = getattr(cfg.data, key)
        need(pattern is None or "{split}" in pattern, f"data.{key} '{pattern}' must contain '{{split}}'")
    need(not (cfg.data.pixel_cache and cfg.data.image_root),
         "data.pixel_cache and data.image_root are both set: keep data.pixel_cache (decoded pixels, exact, N x 3 x "
         "S x S bytes on disk) or data.image_root (a resized JPEG copy, smaller, not exact)")


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
    if isinstance(cfg, LossConfig):
        return {"gather_features": cfg.gather_features, **({"plugins": list(cfg.plugins)} if cfg.plugins else {}),
                **{name: config_to_dict(section) for name, section in cfg.terms.items()}}
    out: dict = {}
    for f in dataclasses.fields(cfg):
        value, flat = getattr(cfg, f.name), f.metadata.get("yaml_keys")
        if flat:
            out.update({key: getattr(value, part) for part, key in flat.items()})
        elif dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        else:
            out[f.name] = [config_to_dict(v) if dataclasses.is_dataclass(v) else v for v in value] \
                if isinstance(value, list) else value
    return out


