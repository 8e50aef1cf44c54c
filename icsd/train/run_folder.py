"""The run folder's one owner: the lease, where a run starts (fresh or resumed), checkpoints and their links,
the log and the config, all written by the main rank.

Bookkeeping survives a kill at any instant. Each checkpoint carries the log records of every finished
epoch, so ``log.jsonl`` is rewritten from the checkpoint a run resumes from; best and per-epoch checkpoints
are hard links to the epoch's ``checkpoint_last.pth``; every file is written under a temp name, synced and
renamed (``icsd.files.write_atomic``), and a start removes the temp files a kill left. On resume, the links
a kill may have missed are made again from the checkpoint itself.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Optional

import torch

from icsd.config import Config, config_to_dict
from icsd.errors import CheckpointError, ConfigError, FileWriteError, RunFolderBusy
from icsd.files import (
    TMP_SUFFIX,
    fsync_dir,
    require_creatable_folder,
    require_file,
    write_atomic,
    write_text,
    write_yaml,
)
from icsd.lease import Lease, LeaseHeld, LeaseLost
from icsd.logger import log_to_file
from icsd.runs import BEST, CONFIG, LAST, LEASE, LOG, OUT_LOG, epoch_checkpoint, read_log


def link_checkpoint(src: str, dst: str) -> None:
    """Make ``dst`` the same file as ``src``: a hard link (instant, no extra disk), or a copy where the file
    system has none; atomically (temp name, then rename), so ``dst`` is always a whole checkpoint. A later
    save of ``src`` replaces it by a new file and leaves ``dst`` as it was."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return  # already linked (a resumed run redoing its bookkeeping); rename() would leave the temp name
    tmp = dst + TMP_SUFFIX
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here: a durable copy, with the writer's messages (a full disk named)
        with open(src, "rb") as source:
            write_atomic(dst, lambda f: shutil.copyfileobj(source, f), "checkpoint")
        return
    os.replace(tmp, dst)
    fsync_dir(os.path.dirname(dst))


class RunFolder:
    """``cfg.run_dir``: what training reads from and writes to it. Every method runs on the main rank."""

    def __init__(self, cfg: Config):
        self.cfg, self.path = cfg, cfg.run_dir
        self.last, self.best, self.log = (os.path.join(self.path, name) for name in (LAST, BEST, LOG))
        self.lease = Lease(os.path.join(self.path, LEASE))
        self.created = False  # this run made the folder (an early failure then leaves nothing behind)

    def open(self, resume: Optional[str], force_unlock: bool = False) -> Optional[str]:
        """Take the folder's lease; returns the checkpoint to resume from (None: a fresh start). A fresh
        run never writes into a folder that holds another run's checkpoints."""
        require_creatable_folder(self.path, "output_dir", ConfigError)
        if resume is not None and resume != "auto":
            require_file(resume, "--resume", CheckpointError, "checkpoint")
        self.created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        try:
            self.lease.acquire(force=force_unlock)
        except LeaseHeld as held:
            raise RunFolderBusy(f"{self.path} is in use by another run ({held.holder.describe()}; lease "
                                f"{held.path}). Wait for it to end; if it is dead, --resume auto --force-unlock "
                                f"takes it over") from None
        if resume == "auto":
            return self.last if os.path.isfile(self.last) else None
        if resume is None:
            found = sorted(glob.glob(os.path.join(self.path, "checkpoint_*.pth")))
            if found:
                raise ConfigError(f"{self.path} already holds a run ({', '.join(map(os.path.basename, found))}): "
                                  f"continue it with --resume auto, or choose another output_dir or seed")
        return resume

    def start(self, resumed: bool) -> None:
        """The run begins writing: ``out.log`` from here on, the resolved config; a fresh run drops a crashed
        run's log and temp files (``open`` saw no checkpoint)."""
        log_to_file(os.path.join(self.path, OUT_LOG))
        write_yaml(os.path.join(self.path, CONFIG), config_to_dict(self.cfg), "config")
        if not resumed:
            self.remove_temp_files()
            self.write_log([])

    def close(self) -> None:
        """Release the lease; a folder this run made and never wrote to goes too."""
        self.lease.release()
        if self.created and os.path.isdir(self.path) and not os.listdir(self.path):
            os.rmdir(self.path)

    def remove_temp_files(self) -> None:
        """What a kill left half-written; not the lease's own temp file, which its refresh may be writing."""
        for tmp in glob.glob(os.path.join(self.path, "*" + TMP_SUFFIX)):
            if tmp != self.lease.path + TMP_SUFFIX:
                os.remove(tmp)

    def write_log(self, records: list[dict]) -> None:
        """``log.jsonl`` as a whole, from the records the last checkpoint carries."""
        write_text(self.log, "".join(json.dumps(r) + "\n" for r in records), "log")

    def save(self, checkpoint: dict) -> None:
        """``checkpoint_last.pth``; on failure the previous one is intact and the message says so."""
        try:
            self.lease.check()
        except LeaseLost as lost:
            to = f" to {lost.holder.describe()}" if lost.holder else ""
            raise RunFolderBusy(f"this run lost its folder's lease{to}: it stops without writing to "
                                f"{self.path}") from None
        try:
            write_atomic(self.last, lambda f: torch.save(checkpoint, f), "checkpoint")
        except FileWriteError as exc:
            fix = "free space" if exc.no_space else "fix the cause"
            raise FileWriteError(f"{exc}. The previous checkpoint is intact; {fix}, then continue with "
                                 f"--resume auto", exc.no_space) from None

    def commit_epoch(self, checkpoint: dict) -> None:
        """The end of an epoch: its checkpoint, then the links and the log derived from it. A kill between any
        two steps is repaired by ``restore`` on resume."""
        self.save(checkpoint)
        self._links_and_log(checkpoint)

    def restore(self, checkpoint: dict, path: str) -> list[dict]:
        """Resuming from ``checkpoint`` (read from ``path``): redo what its epoch's bookkeeping may have missed,
        drop later records. Returns the log records of the epochs the checkpoint finished."""
        self.remove_temp_files()
        if checkpoint.get("log") is None:  # a checkpoint from before the log travelled with it: the log file's
            records = [r for r in (read_log(self.log) if os.path.isfile(self.log) else [])
                       if r["epoch"] <= checkpoint["epoch"]]
            self.write_log(records)
            return records
        if checkpoint.get("position") is None and os.path.abspath(path) == os.path.abspath(self.last):
            self._links_and_log(checkpoint)
        else:
            self.write_log(checkpoint["log"])
        return list(checkpoint["log"])

    def _links_and_log(self, checkpoint: dict) -> None:
        epoch = checkpoint["epoch"]
        if checkpoint["best"]["epoch"] == epoch:
            link_checkpoint(self.last, self.best)
        save_every = self.cfg.train.save_every
        if save_every and epoch % save_every == 0:
            link_checkpoint(self.last, os.path.join(self.path, epoch_checkpoint(epoch)))
        self.write_log(checkpoint["log"])

