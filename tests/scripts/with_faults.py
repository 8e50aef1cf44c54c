"""Test launcher: patch faults into the code, then run an entry point as ``__main__``.

    ICSD_TEST_FAULTS='[{"target": "icsd.train.loop:optimizer_step", "nth": 3, "action": "raise",
                        "message": "CUDA out of memory"}]' python tests/scripts/with_faults.py retrieval.py --config ...
    torchrun --nproc_per_node=2 tests/scripts/with_faults.py retrieval.py ...

This is the seam the tests use to inject faults: production code reads no fault-injection variable. Each
fault wraps one callable, named ``module:attribute`` (``module:Class.method`` for a method), and acts on its
``nth`` call (1-based; counted among the calls whose arguments contain ``match`` when given), on every rank
or only on ``rank``:

- ``"when"``: ``"before"`` (default) or ``"after"`` the real call;
- ``"action"``: ``"raise"`` (``error``, default RuntimeError, with ``message``), ``"exit"`` (``os._exit(code)``, as
  ``kill -9`` would, default 137), ``"sleep"`` (``seconds``), ``"nan"`` (the call returns its result, or each
  value of its dict, times NaN), ``"disk_full"`` (what ``torch.save`` raises on a full disk: a RuntimeError
  from its zip writer while handling the file's ``OSError(ENOSPC)``);
- ``"repeat": true`` acts on every call from the ``nth`` on.
"""
from __future__ import annotations

import errno
import functools
import importlib
import json
import os
import runpy
import sys
import time

ENV = "ICSD_TEST_FAULTS"


def _resolve(target: str):
    module_name, _, attr_path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def _act(fault: dict, result=None):
    action = fault["action"]
    if action == "raise":
        error = {"RuntimeError": RuntimeError, "OSError": OSError, "KeyError": KeyError}[fault.get("error",
                                                                                                "RuntimeError")]
        raise error(fault.get("message", "injected fault"))
    if action == "exit":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(fault.get("code", 137))
    if action == "sleep":
        time.sleep(fault["seconds"])
    if action == "nan":  # a tensor, or a dict of them (loss terms)
        if isinstance(result, dict):
            return {key: value * float("nan") for key, value in result.items()}
        return result * float("nan")
    if action == "disk_full":
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")  # noqa: B904
    return result


def install(fault: dict) -> None:
    if fault.get("rank") is not None and int(os.environ.get("RANK", "0")) != fault["rank"]:
        return
    owner, name = _resolve(fault["target"])
    real = getattr(owner, name)
    calls = [0]

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        if "match" in fault and not any(fault["match"] in str(a) for a in (*args, *kwargs.values())):
            return real(*args, **kwargs)
        calls[0] += 1
        due = calls[0] == fault.get("nth", 1) or (fault.get("repeat") and calls[0] >= fault.get("nth", 1))
        if due and fault.get("when", "before") == "before" and fault["action"] != "nan":
            _act(fault)
        result = real(*args, **kwargs)
        if due and (fault.get("when") == "after" or fault["action"] == "nan"):
            result = _act(fault, result)
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    for fault in json.loads(os.environ.get(ENV, "[]")):
        install(fault)
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
