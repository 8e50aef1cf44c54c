"""Image-teacher features (Unicom, open_clip, timm) of every image of each split, resumable.

The command `python -m icsd.prep extract-image`; `--help` shows its usage and every option, and
datasets/README.md the whole preparation. Run from the repository root with the project installed
(`pip install -e .`, which `make` does).
"""
import sys

from icsd.tools.prep.__main__ import command

main = command("extract-image")

if __name__ == "__main__":
    sys.exit(main())
