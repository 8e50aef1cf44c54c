"""A lease on a path, held by one process at a time: one run per run folder (``run.lock``, held by the run's
main process for its whole life), one builder per cache (``<cache>.lock``, while it is built).

The lease names its holder (host, pid, the process's start time, when it started) and is refreshed every
``REFRESH_SECONDS`` by a thread of the holder. Acquiring a lease held by a live process raises ``LeaseHeld``
(the caller says what that means: a run stops at start naming the holder, a cache build waits). A lease whose
holder is gone is taken over, with one line saying so: on the same host the holder's process is checked (pid
and start time, so a reused pid is not mistaken for it); on another host the lease is stale when it has not
been refreshed for ``STALE_SECONDS``, so a job requeued onto another node after a node failure is not blocked
for ever. ``force`` (``--force-unlock``) takes a lease whatever its state, for a user who knows its holder is
dead.

What it guarantees on shared file systems: the lease is created with ``O_CREAT | O_EXCL`` and taken over with
``rename``, both atomic on local disks, NFS (v3 and later) and Lustre, so of two runs starting at once exactly
one gets the folder. Staleness across hosts compares the holder's recorded refresh time with this host's
clock: hosts whose clocks disagree by more than a few minutes (no NTP) can take a live lease over.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Optional

from icsd.files import fsync_dir, write_json

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
STALE_SECONDS = 300.0


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (Linux: clock ticks since boot, from /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclasses.dataclass
class Holder:
    host: str
    pid: int
    process_start: Optional[str]
    started: str
    refreshed: float  # time.time() of the last refresh
    token: str

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()),
                   datetime.datetime.now().astimezone().isoformat(timespec="seconds"), time.time(),
                   secrets.token_hex(8))

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"

    def alive(self) -> bool:
        if self.host == socket.gethostname():
            if not _pid_alive(self.pid):
                return False
            now = _process_start(self.pid)
            return self.process_start is None or now is None or now == self.process_start
        return time.time() - self.refreshed < STALE_SECONDS


def _read(path: str) -> Optional[Holder]:
    """The lease at ``path``; None when it is gone, or unreadable for longer than a write takes."""
    try:
        with open(path) as f:
            return Holder(**json.load(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        try:
            age = time.time() - os.path.getmtime(path)
        except OSError:
            return None
        if age < 10:  # being written right now: treat as held
            return Holder("?", -1, None, "just now", time.time(), "")
        return None


class LeaseHeld(Exception):
    """Another live process holds the lease (``holder``)."""

    def __init__(self, holder: Holder, path: str):
        super().__init__(f"{path} is held by {holder.describe()}")
        self.holder, self.path = holder, path


class LeaseLost(Exception):
    """This process's lease was taken over by another one (``holder``, None if the lease is gone)."""

    def __init__(self, holder: Optional[Holder], path: str):
        super().__init__(f"{path} was taken over{f' by {holder.describe()}' if holder else ''}")
        self.holder, self.path = holder, path


class Lease:
    """The lease at ``path``, held by this process (``acquire`` ... ``release``)."""

    def __init__(self, path: str):
        self.path = path
        self.holder = Holder.me()
        self.held = False
        self.lost = False
        self.lost_to: Optional[Holder] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self, force: bool = False) -> None:
        """Take the lease, or raise ``LeaseHeld`` naming its live holder."""
        for _ in range(10):  # each turn either creates the lease or moves a stale one away
            if self._create():
                self.held = True
                self._start_refreshing()
                return
            holder = _read(self.path)
            if holder is None:
                continue
            if holder.alive() and not force:
                raise LeaseHeld(holder, self.path)
            if self._take_over(holder):
                why = "forced (--force-unlock)" if force and holder.alive() else "its holder is gone"
                logger.info(f"took over the lease {self.path} from {holder.describe()}: {why}")
        raise LeaseHeld(_read(self.path) or Holder("?", -1, None, "?", 0.0, ""), self.path)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(dataclasses.asdict(self.holder), f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(os.path.dirname(self.path))
        return True

    def _take_over(self, stale: Holder) -> bool:
        """Move the stale lease aside (one rename wins); if what moved is not the lease judged stale (it was
        renewed or replaced meanwhile), put it back."""
        aside = f"{self.path}.stale-{self.holder.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # another run moved it first
        moved = _read(aside)
        if moved is not None and moved.token != stale.token:
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            os.remove(aside)
            return False
        os.remove(aside)
        return True

    def _start_refreshing(self) -> None:
        self._thread = threading.Thread(target=self._refresh_loop, name="run-lease", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a failed write (full disk, NFS hiccup): try again next time
                logger.warning(f"could not refresh {self.path} ({exc}); retrying in {REFRESH_SECONDS:.0f} s")

    def refresh(self) -> None:
        """Renew the lease; if another run took it over meanwhile, stop holding it (``check`` then raises)."""
        if not self._still_mine():
            return
        self.holder.refreshed = time.time()
        write_json(self.path, dataclasses.asdict(self.holder), "lease")

    def _still_mine(self) -> bool:
        if self.held:
            current = _read(self.path)
            if current is None or current.token != self.holder.token:
                self.held, self.lost, self.lost_to = False, True, current
                self._stop.set()
        return self.held

    def check(self) -> None:
        """Raise ``LeaseLost`` if another process took the lease over (checked before every write)."""
        if not self._still_mine() and self.lost:
            raise LeaseLost(self.lost_to, self.path)

    def release(self) -> None:
        self._stop.set()
        if self.held:
            current = _read(self.path)
            if current is not None and current.token == self.holder.token:
                os.remove(self.path)
            self.held = False
