"""``python -m icsd.prep <command> [...]``: the dataset preparation commands (see ``icsd.prep``)."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

from icsd.processes import exit_promptly
from icsd.tools.command import run_interruptible

COMMANDS = {  # command -> module with configure(parser), run(args) and USAGE (":name": another run function)
    "karpathy": "icsd.tools.prep.karpathy",
    "albef": "icsd.tools.prep.albef",
    "extract-image": "icsd.tools.prep.image",
    "extract-text": "icsd.tools.prep.text",
    "convert-pickled": "icsd.tools.prep.pickled",
    "resize": "icsd.tools.prep.resize",
    "pixels": "icsd.tools.prep.caches:run_pixels",
    "tokens": "icsd.tools.prep.caches:run_tokens",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m icsd.prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, target in COMMANDS.items():
        module_name, _, run_name = target.partition(":")
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.USAGE.split("\n\n")[0].replace("\n", " "),
                                  description=module.USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(sub)
        sub.set_defaults(run=getattr(module, run_name or "run"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return run_interruptible(lambda: args.run(args))


def command(name: str) -> Callable[[Optional[Sequence[str]]], int]:
    """The ``main(argv)`` of one command, for the scripts in ``datasets/``."""
    def main_of(argv: Optional[Sequence[str]] = None) -> int:
        return main([name, *(sys.argv[1:] if argv is None else argv)])
    return main_of


if __name__ == "__main__":
    sys.exit(exit_promptly(main))
