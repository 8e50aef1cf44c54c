"""Running the real entry points as users do: as subprocesses (where interpreter exit happens), alone or under
torchrun, with DataLoader workers, faults injected through ``tests/scripts/with_faults.py``; every output line
timestamped, and every process the run started found afterwards by a tag in its environment."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from conftest import EXAMPLE_CONFIG, REPO, tiny_overrides

WITH_FAULTS = os.path.join(REPO, "tests", "scripts", "with_faults.py")
TAG = "ICSD_TEST_TAG"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def train_argv(out: str, nproc: int = 1, *opts: str, resume: Optional[str] = None, faults: bool = False,
               config: str = EXAMPLE_CONFIG, extra: tuple = (), torchrun: bool = False) -> list[str]:
    """``retrieval.py`` on the tiny model and the example data: 1 epoch of 9 steps (global batch 32), val
    evaluated, two DataLoader workers (persistent) unless ``opts`` say otherwise; under torchrun when
    ``nproc`` > 1 or ``torchrun``."""
    launcher = [sys.executable]
    if nproc > 1 or torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    entry = [WITH_FAULTS, os.path.join(REPO, "retrieval.py")] if faults else [os.path.join(REPO, "retrieval.py")]
    argv = [*launcher, *entry, "--config", config, "--opts",
            *tiny_overrides(f"output_dir={out}", "train.epochs=1", "eval.splits=[val]", "train.log_every=1",
                            "eval.eval_before_training=false", f"train.batch_size={32 // nproc}",
                            "data.num_workers=2", *opts)]
    return argv + (["--resume", resume] if resume else []) + list(extra)


@dataclass
class Finished:
    code: int
    lines: list[tuple[float, str]]  # (time.monotonic() when read, line without its end)
    ended: float  # time.monotonic() when the process was seen to exit
    leftovers: list[str] = field(default_factory=list)  # processes of the run still alive after it ended

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, text: str) -> tuple[float, str]:
        for moment, line in self.lines:
            if text in line:
                return moment, line
        raise AssertionError(f"no line with {text!r} in:\n{self.output[-4000:]}")

    def seconds_after(self, text: str) -> float:
        """From the first line holding ``text`` to the process's exit."""
        return self.ended - self.first(text)[0]

    def count(self, text: str) -> int:
        return sum(text in line for _, line in self.lines)


def _tagged(tag: str) -> list[str]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.environ().get(TAG) == tag:
                found.append(f"{proc.info['pid']} {proc.info['name']} {' '.join(proc.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def run(argv: list[str], faults: Optional[list[dict]] = None, timeout: float = 240,
        on_line: Optional[Callable[[str, subprocess.Popen], None]] = None, env: Optional[dict] = None) -> Finished:
    """Run ``argv`` in a new session; ``on_line(line, proc)`` sees each line as it comes (to send signals).
    A run still alive after ``timeout`` seconds is killed with its whole session and fails the test."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**ENV, **(env or {}), TAG: tag,
                                                         "ICSD_TEST_FAULTS": json.dumps(faults or [])})
    lines: list[tuple[float, str]] = []

    def read() -> None:  # a thread: a worker left alive keeps the pipe open after the run's own exit
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))
            if on_line is not None:
                on_line(line, proc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output = "\n".join(text for _, text in lines)
        raise AssertionError(f"still running after {timeout} s:\n{output[-4000:]}") from None
    ended = time.monotonic()
    reader.join(5)
    leftovers = _tagged(tag)
    for _ in range(20):  # a child killed at the very end may take a moment to vanish
        if not leftovers:
            break
        time.sleep(0.1)
        leftovers = _tagged(tag)
    if leftovers:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return Finished(code, lines, ended, leftovers)


def signal_at(marker: str, sig: int, rank: Optional[int] = None, times: int = 1, pause: float = 0.0):
    """An ``on_line`` that sends ``sig`` (``times`` times, ``pause`` s apart) once ``marker`` shows: to the whole
    process group as a cluster scheduler does, or only to torchrun's worker of ``rank``."""
    sent = []

    def on_line(line: str, proc: subprocess.Popen) -> None:
        if sent or marker not in line:
            return
        sent.append(True)
        target = None if rank is None else torchrun_worker(proc.pid, rank)
        for i in range(times):
            if i:
                time.sleep(pause)
            os.killpg(proc.pid, sig) if target is None else os.kill(target, sig)

    return on_line


def torchrun_worker(agent_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process of ``rank``: the topmost of the agent's descendants whose RANK is
    ``rank`` (its DataLoader workers inherit the variable)."""
    import psutil

    for child in psutil.Process(agent_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and child.parent().environ().get("RANK") != str(rank):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no torchrun worker of rank {rank}")


def assert_prompt_clean_exit(done: Finished, code: int, message: str, last: bool = True, within: float = 30) -> None:
    """Exit status ``code``; ``message`` shown once (and, single process, last); the process ended within
    ``within`` seconds of it; no process of the run left behind."""
    assert done.code == code, f"exit {done.code}, expected {code}:\n{done.output[-4000:]}"
    assert done.count(message) == 1, done.output[-4000:]
    if last:
        assert message in done.lines[-1][1], done.output[-3000:]
    assert done.seconds_after(message) < within, done.seconds_after(message)
    assert done.leftovers == [], done.leftovers
