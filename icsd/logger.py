"""Messages through Python's ``logging``: every module logs to ``logging.getLogger(__name__)`` (under the
``icsd`` logger); the entry points configure it once with ``setup_logging``.

- Rank 0 shows INFO and above, the other ranks WARNING and above (a torchrun job prints each message once).
- INFO goes to stdout, WARNING and above to stderr, as plain messages: what users read (tables, progress
  lines, ``error: ...``) looks as it did with ``print``.
- ``log_to_file(run_dir/out.log)`` also writes everything this process shows to a file, with times:
  the trainer calls it on rank 0 once the run folder exists.
"""
from __future__ import annotations

import logging
import os
import sys

ROOT_LOGGER = "icsd"


class _ConsoleHandler(logging.Handler):
    """INFO to stdout, WARNING and above to stderr. The streams are looked up at each message, so a
    replaced ``sys.stdout`` (pytest's capture, a redirect) receives it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise; it reports through handleError
            self.handleError(record)


def env_rank() -> int:
    """This process's rank from the launcher's environment (torchrun, else SLURM), before any process group."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def setup_logging(rank: int | None = None) -> logging.Logger:
    """(Re)configure the ``icsd`` logger for this process: console handler, level by rank. Idempotent.
    The ``__main__`` logger gets the same: a module run with ``python -m icsd.<tool>`` logs under that name."""
    rank = env_rank() if rank is None else rank
    for name in ("__main__", ROOT_LOGGER):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        console = _ConsoleHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(console)
        logger.propagate = False  # the entry points own the output; never doubled through the root logger
    return logger


def log_to_file(path: str) -> None:
    """Also write what this process shows to ``path`` (appended: a resumed run continues its ``out.log``)."""
    logger = logging.getLogger(ROOT_LOGGER)
    path = os.path.abspath(path)
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in logger.handlers):
        return
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
