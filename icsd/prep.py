"""``python -m icsd.prep <command>``: the dataset preparation commands (``icsd.tools.prep``)."""
from icsd.processes import exit_promptly
from icsd.tools.prep.__main__ import main

if __name__ == "__main__":
    raise SystemExit(exit_promptly(main))
