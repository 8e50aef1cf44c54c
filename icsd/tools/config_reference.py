"""``docs/config.md``, the reference of every config key, generated from the config dataclasses
(``icsd/config.py`` and the built-in loss terms' sections): key, type, default and meaning, section by section.

    python -m icsd.tools.config_reference --out docs/config.md     # rewrite the page
    python -m icsd.tools.config_reference --check docs/config.md   # exit 1 when the page is stale

A test runs the check, so the page never drifts from the code.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from icsd.config import Config, LossConfig, TemperatureConfig, _type_name
from icsd.files import write_text
from icsd.losses.term import term_classes
from icsd.tools.command import run_command

HEADER = """# Config reference

Every key of a config, generated from the config dataclasses (`icsd/config.py` and each loss term's section)
by `python -m icsd.tools.config_reference --out docs/config.md`; a test fails when this page is stale.

Configs are YAML files mapped onto these typed dataclasses. An unknown or misspelled key stops with the key,
its section, the file and the closest valid key; a wrong type names the expected type (`1e-5` is read as a
float although YAML 1.1 reads it as a string); a value out of range names the key and the value.
`_base_: other.yaml` inherits another file (deep merge, relative to this one). Defaults are the reference
settings. `python retrieval.py --config X.yaml --print-config` shows a resolved config; `--opts key=value`
overrides any key with the same checks.

A temperature is four flat keys of the section that owns it: its initial value, its clamp range (applied after
every optimizer step) and whether it is learned.
"""


def _value(value) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value}`"


def _rows(cls: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = []
    instance = cls()
    for f in dataclasses.fields(cls):
        key, doc = f"{prefix}{f.name}", f.metadata.get("doc", "")
        default = getattr(instance, f.name)
        if f.metadata.get("yaml_keys"):  # a temperature: its four flat keys
            keys = f.metadata["yaml_keys"]
            parts = [(keys["init"], "float", default.init, f"{doc}: initial value"),
                     (keys["min"], "float", default.min, "lower clamp"),
                     (keys["max"], "float", default.max, "upper clamp"),
                     (keys["learnable"], "bool", default.learnable, "learned (else fixed)")]
            rows += [f"| `{prefix}{k}` | {t} | {_value(v)} | {d} |" for k, t, v, d in parts]
        elif dataclasses.is_dataclass(hints[f.name]) and hints[f.name] is not TemperatureConfig:
            continue  # a nested section: its own table
        elif f.name != "terms":
            rows.append(f"| `{key}` | {_type_name(hints[f.name]).replace('|', 'or')} | {_value(default)} | {doc} |")
            item = (typing.get_args(hints[f.name]) or (None,))[0]
            if typing.get_origin(hints[f.name]) is list and dataclasses.is_dataclass(item):
                rows += [row.replace(f"| `{key}.", f"| `{key}[].", 1) for row in _rows(item, f"{key}.")]
    return rows


def _sections(cls: type = Config, prefix: str = "") -> list[tuple[str, type, str]]:
    """(dotted section, its dataclass, what it is about), depth first; ``loss`` then every built-in term."""
    found = [(prefix.rstrip("."), cls, "")]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        child = hints[f.name]
        if dataclasses.is_dataclass(child) and child is not TemperatureConfig:
            sub = _sections(child, f"{prefix}{f.name}.")
            sub[0] = (sub[0][0], sub[0][1], f.metadata.get("doc", ""))
            found += sub
            if child is LossConfig:
                for name, term in term_classes().items():
                    how = "on by default" if term.always_configured else "off unless its section is there"
                    found.append((f"{prefix}loss.{name}", term.config, f"the `{name}` loss term ({how}; "
                                                                          f"logged as `{term.value_name}`)"))
    return found


def render() -> str:
    parts = [HEADER]
    for name, cls, about in _sections():
        rows = _rows(cls, f"{name}." if name else "")
        if not rows:
            continue
        title = f"`{name}`" if name else "top level"
        parts.append(f"\n## {title}\n\n" + (f"{about[0].upper()}{about[1:]}.\n\n" if about else "")
                     + "| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return "".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icsd.tools.config_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="write the page here")
    target.add_argument("--check", help="compare the page here with the code; exit 1 when it is stale")
    args = parser.parse_args(argv)

    def body() -> int:
        page = render()
        if args.out:
            write_text(args.out, page, "config reference")
            return 0
        with open(args.check, encoding="utf-8") as f:
            if f.read() == page:
                return 0
        print(f"{args.check} is stale: python -m icsd.tools.config_reference --out {args.check}", file=sys.stderr)
        return 1

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
