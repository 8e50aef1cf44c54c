"""Text-teacher features (sentence-transformers) of every caption of each split, resumable.

The command `python -m icsd.prep extract-text`; `--help` shows its usage and every option, and
datasets/README.md the whole preparation. Run from the repository root with the project installed
(`pip install -e .`, which `make` does).
"""
import sys

from icsd.tools.prep.__main__ import command

main = command("extract-text")

if __name__ == "__main__":
    sys.exit(main())
