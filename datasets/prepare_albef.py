"""Split JSONs from ALBEF-style annotation files (coco_train.json, flickr30k_test.json, ...).

The command `python -m icsd.prep albef`; `--help` shows its usage and every option, and
datasets/README.md the whole preparation. Run from the repository root with the project installed
(`pip install -e .`, which `make` does).
"""
import sys

from icsd.tools.prep.__main__ import command

main = command("albef")

if __name__ == "__main__":
    sys.exit(main())
