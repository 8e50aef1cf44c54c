"""``python -m icsd.ablate``: an ablation ladder, then its report (``icsd.tools.ablate``)."""
from icsd.processes import exit_promptly
from icsd.tools.ablate import main

if __name__ == "__main__":
    raise SystemExit(exit_promptly(main))
