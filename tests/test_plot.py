"""icsd.plot: the PNG (size, decodes) and the lines drawn, checked against the logs."""
from __future__ import annotations

import pytest
from PIL import Image

from icsd.tools import plot

from example_runs import example_runs, read_log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return example_runs(tmp_path_factory)


def lines_per_axis(fig) -> dict[str, int]:
    return {ax.get_title(): len(ax.get_lines()) for ax in fig.axes}


def logged(records, keys):
    return [k for k in keys if any(k in r for r in records)]


def test_two_runs_overlaid(runs, tmp_path):
    out = str(tmp_path / "curves.png")
    dirs = [runs["contrastive"][0], runs["icsd"][0]]
    assert plot.main([*dirs, "--out", out, "--size", "9", "6", "--dpi", "50"]) == 0
    with Image.open(out) as image:
        image.load()
        assert image.size == (9 * 50, 6 * 50) and image.format == "PNG"

    fig, data = plot.plot_runs(dirs, str(tmp_path / "again.png"))
    logs = [read_log(d) for d in dirs]
    losses, temperatures = ("loss", "loss_contrastive", "loss_soft"), ("tau", "tau_s", "tau_t")
    expected = {"loss terms": sum(len(logged(log, losses)) for log in logs),
                "temperatures": sum(len(logged(log, temperatures)) for log in logs),
                "learning rate": 2,
                "r_mean per split": sum(len(logged(log, ("val_r_mean", "test_r_mean"))) for log in logs)}
    # the contrastive run has no soft-label temperatures: its term is off, so they do not exist
    assert expected == {"loss terms": 6, "temperatures": 4, "learning rate": 2, "r_mean per split": 4}
    assert lines_per_axis(fig) == expected
    assert {t: len(s) for t, s in data.items()} == expected
    (loss_ax,) = [ax for ax in fig.axes if ax.get_title() == "loss terms"]
    (line,) = [ln for ln in loss_ax.get_lines() if ln.get_label() == "icsd: loss"]
    assert list(line.get_ydata()) == [r["loss"] for r in logs[1]]
    assert not loss_ax.collections  # single runs: no band


def test_seeds_of_one_config_are_a_mean_line_with_a_band(runs, tmp_path):
    fig, data = plot.plot_runs(runs["icsd"], str(tmp_path / "seeds.png"))
    assert lines_per_axis(fig)["learning rate"] == 1
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "r_mean per split"]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("icsd: val_r_mean")]
    logs = [read_log(d) for d in runs["icsd"]]
    assert list(line.get_ydata()) == pytest.approx([(a["val_r_mean"] + b["val_r_mean"]) / 2 for a, b in zip(*logs)])
    assert len(ax.collections) == 2  # a min-max band per line
