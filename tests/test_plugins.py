"""A loss term from outside the package (``tests/plugins/probe_term.py``, written against the public API
only) is selected from YAML and trains, alone and under torchrun; its values reach the log, the progress
line, TensorBoard and the plot; off, it creates no parameters."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

import retrieval
from icsd.config import load_config
from icsd.errors import ConfigError
from icsd.losses import Criterion
from icsd.models import build_model
from icsd.tools import plot

from conftest import EXAMPLE_CONFIG, REPO, tiny_overrides

PLUGINS = os.path.join(REPO, "tests", "plugins")
PROBE = ["loss.plugins=[probe_term:Probe]", "loss.probe.weight=0.2", "loss.probe.tau=0.3"]


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    monkeypatch.syspath_prepend(PLUGINS)  # as PYTHONPATH does for the subprocesses


def run_config(tmp_path, name, *opts) -> list[str]:
    return tiny_overrides(f"output_dir={tmp_path}/{name}", "train.epochs=2", "eval.splits=[val]",
                          "eval.eval_before_training=false", "train.log_every=3", *PROBE, *opts)


def read_log(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]


def scalar_tags(run_dir: str) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def assert_probe_logged(records: list[dict]) -> None:
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["loss_probe"] > 0 and r["probe_kl"] == pytest.approx(r["loss_probe"] / 0.2)
        assert 0.05 <= r["tau_probe"] <= 1.0
        assert r["loss"] == pytest.approx(r["loss_contrastive"] + r["loss_soft"] + r["loss_probe"], rel=1e-6)


def test_a_plugin_term_trains_and_shows_everywhere(tmp_path, capsys):
    assert retrieval.main(["--config", EXAMPLE_CONFIG, "--opts",
                           *run_config(tmp_path, "probe", "train.report_to=[tensorboard]")]) == 0
    run_dir = f"{tmp_path}/probe_seed42"
    assert_probe_logged(read_log(run_dir))
    shown = capsys.readouterr().out
    assert "loss_probe 0." in shown and "probe 0." in shown  # the progress lines and the epoch line
    assert {"train/loss_probe", "train/probe_kl", "train/tau_probe", "epoch/loss_probe"} <= scalar_tags(run_dir)
    fig, _ = plot.plot_runs([run_dir], str(tmp_path / "curves.png"))
    labels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
    assert "probe: loss_probe" in labels["loss terms"] and "probe: tau_probe" in labels["temperatures"]
    state = torch.load(os.path.join(run_dir, "checkpoint_last.pth"), map_location="cpu", weights_only=False)
    assert {"loss_heads.probe.weight", "loss_heads.probe.bias", "temperatures.tau_probe.value"} <= set(state["model"])
    assert state["config"]["loss"]["plugins"] == ["probe_term:Probe"] and state["config"]["loss"]["probe"]["dim"] == 8


def test_a_plugin_term_trains_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": PLUGINS}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(REPO, "retrieval.py"), "--config", EXAMPLE_CONFIG, "--opts",
                           *run_config(tmp_path, "probe2", "train.batch_size=16")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_probe_logged(read_log(f"{tmp_path}/probe2_seed42"))
    assert "loss_probe 0." in proc.stdout


def test_a_term_that_is_off_creates_nothing_but_still_logs_zero():
    cfg = load_config(EXAMPLE_CONFIG, tiny_overrides(*PROBE, "loss.probe.weight=0"))
    model, _ = build_model(cfg)
    assert not any(k.startswith(("loss_heads.probe", "temperatures.tau_probe")) for k in model.state_dict())
    out = {k: torch.randn(4, 64) for k in ("x_img", "x_txt", "f_img", "f_txt")}
    batch = {"image_index": torch.tensor([0, 1, 1, 2]), "ext_img": torch.randn(4, 12), "ext_txt": torch.randn(4, 384)}
    values = Criterion(cfg.loss)(out, batch, model)
    assert float(values["loss_probe"]) == 0.0 and "probe_kl" not in values
    on = load_config(EXAMPLE_CONFIG, tiny_overrides(*PROBE))
    assert {"loss_heads.probe.weight", "temperatures.tau_probe.value"} <= set(build_model(on)[0].state_dict())


def test_weights_of_a_term_that_is_on_load_where_it_is_off_without_its_temperature(caplog):
    """Evaluating a run with a term the config turns off: the term's temperature is not loaded, and said so;
    every other weight is."""
    from icsd.models.loading import load_model_weights

    cfg = load_config(EXAMPLE_CONFIG, tiny_overrides(*PROBE, "loss.probe.weight=0"))
    trained = {k: v + 1 for k, v in build_model(cfg)[0].state_dict().items()}  # differs from a fresh model
    weights = {**trained, "temperatures.tau_probe.value": torch.tensor(0.3)}
    off, _ = build_model(cfg)
    with caplog.at_level("INFO", logger="icsd.models.loading"):
        load_model_weights(off, weights, "run.pth")
    assert "run.pth: not loaded, the temperatures of terms this config does not use: [temperatures.tau_probe.value]" \
        in caplog.text
    assert all(torch.equal(v, trained[k]) for k, v in off.state_dict().items())


def test_sections_and_import_paths_are_checked():
    with pytest.raises(ConfigError, match=r"unknown key 'probe' in section 'loss'"):
        load_config(EXAMPLE_CONFIG, ["loss.probe.weight=0.2"])  # no plug-in named: the section is unknown
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_module' of 'no_such_module:Term'"):
        load_config(EXAMPLE_CONFIG, ["loss.plugins=[no_such_module:Term]"])
    with pytest.raises(ConfigError, match=r"'probe_term:ProbeConfig' is not a loss term"):
        load_config(EXAMPLE_CONFIG, ["loss.plugins=[probe_term:ProbeConfig]"])
    with pytest.raises(ConfigError, match=r"unknown key 'dims' in section 'loss.probe'; did you mean 'dim'"):
        load_config(EXAMPLE_CONFIG, [*PROBE, "loss.probe.dims=4"])
