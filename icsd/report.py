"""``python -m icsd.report``: the results table of run folders (``icsd.tools.report``)."""
from icsd.processes import exit_promptly
from icsd.tools.report import main

if __name__ == "__main__":
    raise SystemExit(exit_promptly(main))
