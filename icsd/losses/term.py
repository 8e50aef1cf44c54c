"""A loss term: one unit per YAML section under ``loss:``.

A term declares four things:

- its config section: ``section`` (the YAML key) and ``config`` (a dataclass, typed and validated like every
  key; a ``weight`` field is required: 0 turns the term off);
- what it reads: ``reads()`` names the model outputs (differentiable: ``x_img``, ``x_txt``, ``f_img``,
  ``f_txt``, and ``logits`` = ``f_img f_txt^T`` in float32, computed once for all terms) and the batch fields
  (constants: ``image_index``, ``ext_img``, ``ext_txt``); a gathered loss (``loss.gather_features``)
  all-gathers exactly these (``logits``: its features, gathered first);
- the parameters it owns: ``temperatures()`` (name -> ``TemperatureConfig``; names start with ``tau``) and
  ``heads(dim, init_std)`` (name -> module), created only when the term is on and clamped after every step
  (temperatures); ``uses()`` names temperatures of other terms it reads (shared by name);
- the named values it returns: ``__call__(out, batch, params)`` returns ``{"loss": ..., <parts>...}``; the
  criterion logs ``value_name`` = weight x loss and the parts, and sums the weighted losses.

Built-in terms register under their section name (``BUILTIN_TERMS``); a term from outside the package is named
in the YAML by its import path, ``loss.plugins: ["my_module:MyTerm"]``, so that subprocess and torchrun runs
find it the same way. Its module must be importable (installed, or on ``PYTHONPATH``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from icsd.config import TemperatureConfig
from icsd.errors import ConfigError

BUILTIN_TERMS = ("icsd.losses.contrastive:Contrastive", "icsd.losses.soft_label:SoftLabel",
                 "icsd.losses.uni_modal:UniModal")
DERIVED_OUTPUTS = {"logits": ("f_img", "f_txt")}  # computed by the criterion from these (after a gather)


@dataclass(frozen=True)
class Reads:
    """What a term reads: model outputs (per sample, differentiable) and batch fields (per sample, constant)."""

    outputs: tuple[str, ...] = ()
    batch: tuple[str, ...] = ()

    def __or__(self, other: Reads) -> Reads:
        return Reads(tuple(dict.fromkeys(self.outputs + other.outputs)), tuple(dict.fromkeys(self.batch + other.batch)))


class Parameters(Protocol):
    """Where a term finds its parameters (the model holds them): by name."""

    def temperature(self, name: str) -> torch.Tensor: ...

    def head(self, name: str) -> nn.Module: ...


class LossTerm:
    """Base class of a loss term (see the module's docstring); subclasses set the class attributes."""

    section: ClassVar[str]  # its YAML section under loss:
    config: ClassVar[type]  # the section's dataclass, with a ``weight: float``
    value_name: ClassVar[str]  # its weighted value in the log (loss_<something>)
    always_configured: ClassVar[bool] = False  # True: an absent section means its defaults (built-ins that are on)

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @property
    def weight(self) -> float:
        return float(self.cfg.weight)

    @property
    def on(self) -> bool:
        return self.weight > 0

    def check(self) -> None:
        """Raise ConfigError for values that are each valid but wrong together (the schema checks the rest)."""

    def reads(self) -> Reads:
        raise NotImplementedError

    def temperatures(self) -> dict[str, TemperatureConfig]:
        return {}

    def uses(self) -> tuple[str, ...]:
        return ()

    def heads(self, dim: int, init_std: float) -> dict[str, nn.Module]:
        return {}

    def __call__(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                 params: Parameters) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def load_term(path: str, where: str = "loss.plugins") -> type[LossTerm]:
    """The LossTerm class at ``module:Class``."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"{where}: '{path}' must be an import path 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import '{module_name}' of '{path}' ({exc}); the module must be "
                          f"installed or on PYTHONPATH") from None
    term = getattr(module, class_name, None)
    if not (isinstance(term, type) and issubclass(term, LossTerm)):
        raise ConfigError(f"{where}: '{path}' is not a loss term (a subclass of icsd.losses.LossTerm)")
    return term


def term_classes(plugins: list[str] = ()) -> dict[str, type[LossTerm]]:
    """Every loss term a config can name, by section: the built-ins, then ``plugins`` in their order."""
    classes: dict[str, type[LossTerm]] = {}
    for path in (*BUILTIN_TERMS, *plugins):
        term = load_term(path)
        if term.section in classes and classes[term.section] is not term:
            raise ConfigError(f"loss.plugins: '{path}' uses the section '{term.section}', which "
                              f"{classes[term.section].__module__}:{classes[term.section].__name__} has")
        if not term.value_name.startswith("loss_"):
            raise ConfigError(f"loss.plugins: '{path}'.value_name must start with 'loss_' (the log's loss keys)")
        classes[term.section] = term
    return classes
