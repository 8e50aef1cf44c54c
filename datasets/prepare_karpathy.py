"""Split JSONs from Karpathy's split files (dataset_coco.json, dataset_flickr30k.json).

The command `python -m icsd.prep karpathy`; `--help` shows its usage and every option, and
datasets/README.md the whole preparation. Run from the repository root with the project installed
(`pip install -e .`, which `make` does).
"""
import sys

from icsd.tools.prep.__main__ import command

main = command("karpathy")

if __name__ == "__main__":
    sys.exit(main())
