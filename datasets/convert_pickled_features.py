"""Convert a released pickled-dict feature file to the project's memory-mapped layout.

The command `python -m icsd.prep convert-pickled`; `--help` shows its usage and every option, and
datasets/README.md the whole preparation. Run from the repository root with the project installed
(`pip install -e .`, which `make` does).
"""
import sys

from icsd.tools.prep.__main__ import command

main = command("convert-pickled")

if __name__ == "__main__":
    sys.exit(main())
