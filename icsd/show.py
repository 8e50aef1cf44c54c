"""``python -m icsd.show``: a sheet of retrieval examples (``icsd.tools.show``)."""
from icsd.processes import exit_promptly
from icsd.tools.show import main

if __name__ == "__main__":
    raise SystemExit(exit_promptly(main))
