"""The tools around training: report, plot, show, export, ablate and the dataset preparation commands.
Each runs as ``python -m icsd.<tool>``."""
