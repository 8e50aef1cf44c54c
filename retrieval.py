"""Train ICSD (or evaluate with --eval). Single process or ``torchrun --nproc_per_node=N retrieval.py``.

    python retrieval.py --config configs/example/icsd.yaml
    torchrun --nproc_per_node=4 retrieval.py --config configs/vitb32/coco/icsd.yaml

The entry point itself is ``icsd.train.main`` (also ``python -m icsd.train``).
"""
import sys

from icsd.processes import exit_promptly
from icsd.train.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(exit_promptly(main))
