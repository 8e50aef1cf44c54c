"""``python -m icsd.train``: the same as ``retrieval.py`` (the form ``icsd.ablate`` runs, from any folder)."""
import sys

from icsd.processes import exit_promptly
from icsd.train.main import main

if __name__ == "__main__":
    sys.exit(exit_promptly(main))
