"""icsd.ablate: runs (config, seed) in turn as subprocesses, stops on a failure, skips finished runs."""
from __future__ import annotations

import os
import sys

from icsd.tools import ablate

from conftest import REPO, tiny_overrides

OPTS = tiny_overrides("train.epochs=1", "eval.splits=[val]", "eval.eval_before_training=false")


def write_config(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_rerun_skips_finished_runs_and_runs_the_rest(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = os.path.join(REPO, "configs", "example", "contrastive.yaml")
    good = write_config(tmp_path / "a.yaml", f"_base_: {base}\noutput_dir: {tmp_path}/out/a\n")
    first = f"{tmp_path}/out/a_seed1"

    # the ablation stopped after its first run (here: started with one seed)
    assert ablate.main(["--configs", good, "--seeds", "1", "--opts", *OPTS]) == 0
    out = capsys.readouterr().out
    assert f"[1/1] {first}: run: " in out and "--resume auto" in out and "| a | 1 (n=1) |" in out
    assert ablate.run_is_finished(first, 1)
    mtime = os.path.getmtime(os.path.join(first, "checkpoint_last.pth"))

    # rerun: the finished run is skipped, the rest runs, then the report table of all of them
    assert ablate.main(["--configs", good, "--seeds", "1", "2", "--opts", *OPTS]) == 0
    out = capsys.readouterr().out
    assert f"[1/2] {first}: skip (finished, 1 epochs)" in out and f"[2/2] {tmp_path}/out/a_seed2: run: " in out
    assert os.path.getmtime(os.path.join(first, "checkpoint_last.pth")) == mtime
    assert ablate.run_is_finished(f"{tmp_path}/out/a_seed2", 1)
    assert "| a | 1, 2 (n=2) |" in out

    # --dry-run runs nothing and shows what would run
    assert ablate.main(["--configs", good, "--seeds", "1", "3", "--opts", *OPTS, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[1/2] {first}: skip" in out and f"[2/2] {tmp_path}/out/a_seed3: would run: " in out
    assert not os.path.exists(f"{tmp_path}/out/a_seed3")


def test_first_failing_run_stops_the_ablation_with_its_exit_code(tmp_path, capsys, monkeypatch):
    # Stand-in runs (a real failing run is the same subprocess exit status, seconds slower): seed 2 fails.
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.chdir(tmp_path)  # the runs' output/ is the test's own
    monkeypatch.setattr(ablate, "command_for", lambda config, seed, opts, nproc, python: [
        python, "-c", f"import sys; open(r'{marks}/ran' + str({seed}), 'w'); sys.exit(3 if {seed} == 2 else 0)"])
    config = os.path.join(REPO, "configs", "example", "icsd.yaml")
    assert ablate.main(["--configs", config, "--seeds", "1", "2", "3"]) == 3
    captured = capsys.readouterr()
    assert sorted(os.listdir(marks)) == ["ran1", "ran2"]  # seed 3 never started
    assert captured.err.startswith("error: output/example/icsd_seed2 failed (exit code 3); rerun the same command")
    assert "| icsd |" not in captured.out  # no report after a failure


def test_commands_and_early_errors(tmp_path, capsys):
    command = ablate.command_for("c.yaml", 3, ["train.epochs=2"], 4, "py")
    assert command[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert command[5:] == ["-m", "icsd.train", "--config", "c.yaml", "--seed", "3", "--resume", "auto", "--opts",
                           "train.epochs=2"]
    assert ablate.command_for("c.yaml", None, [], None, "py")[:3] == ["py", "-m", "icsd.train"]
    # every config is checked before the first run starts
    assert ablate.main(["--configs", os.path.join(REPO, "configs", "example", "icsd.yaml"),
                        str(tmp_path / "typo.yaml"), "--dry-run"]) == 1
    assert capsys.readouterr().err == f"error: config file not found: {tmp_path / 'typo.yaml'}\n"
    assert ablate.main(["--configs", os.path.join(REPO, "configs", "example", "icsd.yaml"), "--baseline",
                        "contrastive", "--dry-run"]) == 1
    assert capsys.readouterr().err == "error: --baseline contrastive is none of the runs' configs (icsd)\n"
    # as the report names groups: the shown name (two icsd groups) or its last component
    paper = [os.path.join(REPO, "configs", "vitb32", data, "icsd.yaml") for data in ("coco", "flickr")]
    for baseline, code in (("coco/icsd", 0), ("icsd", 0), ("vitb32/coco/icsd", 1)):
        assert ablate.main(["--configs", *paper, "--baseline", baseline, "--dry-run"]) == code, baseline
    assert capsys.readouterr().err == ("error: --baseline vitb32/coco/icsd is none of the runs' configs "
                                       "(coco/icsd, flickr/icsd)\n")
    (job,) = ablate.plan([os.path.join(REPO, "configs", "example", "icsd.yaml")], [None], [])
    assert job.command[0] == sys.executable
