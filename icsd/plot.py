"""``python -m icsd.plot``: the curves of run folders (``icsd.tools.plot``)."""
from icsd.processes import exit_promptly
from icsd.tools.plot import main

if __name__ == "__main__":
    raise SystemExit(exit_promptly(main))
