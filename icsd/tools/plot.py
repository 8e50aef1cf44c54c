"""Training curves of one or more runs in one PNG: loss terms, temperatures, lr and each split's r_mean.

    python -m icsd.plot output/example/icsd_seed42 output/example/contrastive_seed42 --out curves.png
    python -m icsd.plot 'output/example/*_seed*' --out ladder.png

Runs are grouped by config as in ``icsd.report`` (the run folder without ``_seed{N}``): a config with
several seeds is drawn as the mean over its seeds with a min-max band; each config has its own colour,
each quantity its own line style.
"""
from __future__ import annotations

import argparse
import logging
import statistics
from dataclasses import dataclass

from icsd.files import require_creatable_file, write_atomic
from icsd.runs import Run, group_runs, is_number, load_runs, short_names
from icsd.tools.command import run_command

logger = logging.getLogger(__name__)

STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3)))


@dataclass
class Series:
    """One drawn line: the mean over seeds per epoch, with the min and max (equal for one seed)."""

    label: str
    group: str
    key: str
    epochs: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    n_runs: int


def logged_keys(runs: list[Run], wanted) -> list[str]:
    """The log keys for which ``wanted(key)`` holds, in first-seen order: whatever terms and splits a run has."""
    return list(dict.fromkeys(key for run in runs for record in run.records for key in record if wanted(key)))


def is_loss(key: str) -> bool:
    """The total and each loss term's weighted value (``loss``, ``loss_contrastive``, ``loss_soft``, ...)."""
    return key == "loss" or key.startswith("loss_")


def is_temperature(key: str) -> bool:
    """Every loss temperature is logged by its name, which starts with ``tau``."""
    return key.startswith("tau")


def is_r_mean(key: str) -> bool:
    """``{split}_r_mean`` (``val_r_mean``, ``test_1k_r_mean``; not the per-direction means nor
    ``best_val_r_mean``)."""
    return key.endswith("_r_mean") and not key[:-len("_r_mean")].endswith(("_txt", "_img")) \
        and not key.startswith("best_")


def series_for(name: str, runs: list[Run], key: str) -> Series | None:
    """``key`` per epoch over the group's runs; None when no run logged it."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for record in run.records:
            if is_number(record.get(key)):
                by_epoch.setdefault(record["epoch"], []).append(float(record[key]))
    if not by_epoch:
        return None
    epochs = sorted(by_epoch)
    return Series(label=f"{name}: {key}" + (f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""),
                  group=name, key=key, epochs=epochs, mean=[statistics.fmean(by_epoch[e]) for e in epochs],
                  low=[min(by_epoch[e]) for e in epochs], high=[max(by_epoch[e]) for e in epochs], n_runs=len(runs))


def curve_data(runs: list[Run]) -> dict[str, list[Series]]:
    """Panel title -> the series drawn in it, for every group of runs."""
    groups = group_runs(runs)
    names = short_names(list(groups))
    panels = {"loss terms": logged_keys(runs, is_loss), "temperatures": logged_keys(runs, is_temperature),
              "learning rate": ["lr"], "r_mean per split": logged_keys(runs, is_r_mean)}
    data: dict[str, list[Series]] = {}
    for title, keys in panels.items():
        data[title] = [s for group, members in groups.items() for key in keys
                       if (s := series_for(names[group], members, key)) is not None]
    return data


def make_figure(data: dict[str, list[Series]], figsize: tuple[float, float] = (12.0, 8.0), dpi: int = 100):
    """A 2x2 figure, one panel per entry of ``data``; one line per series (+ a min-max band for seeds)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on clusters or CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=figsize, dpi=dpi)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(s.group for series in data.values() for s in series))
    for ax, (title, series) in zip(axes.flat, data.items()):
        keys = list(dict.fromkeys(s.key for s in series))
        for s in series:
            colour = colours[groups.index(s.group) % len(colours)]
            ax.plot(s.epochs, s.mean, color=colour, linestyle=STYLES[keys.index(s.key) % len(STYLES)],
                    marker="." if len(s.epochs) < 30 else None, label=s.label)
            if s.n_runs > 1:
                ax.fill_between(s.epochs, s.low, s.high, color=colour, alpha=0.15, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title == "temperatures" and series:
            ax.set_yscale("log")  # tau ~0.05 beside tau_s ~0.45 and tau_t 1
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize="x-small")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def plot_runs(patterns: list[str], out: str, figsize: tuple[float, float] = (12.0, 8.0), dpi: int = 100):
    """Read the runs, draw them and save the PNG; returns (figure, data) so callers can inspect both."""
    data = curve_data(load_runs(patterns))
    fig = make_figure(data, figsize, dpi)
    write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=dpi), "plot")
    return fig, data


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m icsd.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, globs, or folders holding runs")
    parser.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    parser.add_argument("--size", nargs=2, type=float, default=[12.0, 8.0], metavar=("W", "H"),
                        help="figure size in inches (default: 12 8)")
    parser.add_argument("--dpi", type=int, default=100, help="pixels per inch (default: 100)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> None:
        require_creatable_file(args.out, "--out")
        plot_runs(args.runs, args.out, tuple(args.size), args.dpi)
        logger.info(f"wrote {args.out}")

    return run_command(body)

