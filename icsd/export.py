"""``python -m icsd.export``: a checkpoint as a shareable folder (``icsd.tools.export``)."""
from icsd.processes import exit_promptly
from icsd.tools.export import main

if __name__ == "__main__":
    raise SystemExit(exit_promptly(main))
