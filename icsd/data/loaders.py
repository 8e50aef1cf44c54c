"""The one DataLoader class of the project: its iterators are tracked, so a process that is ending shuts
their workers down itself (``icsd.processes.shutdown_loaders``) instead of hanging at interpreter exit."""
from __future__ import annotations

from torch.utils.data import DataLoader

from icsd.processes import shutdown_iterator, track_iterator


class Loader(DataLoader):
    """``torch.utils.data.DataLoader`` whose iterators ``icsd.processes.shutdown_loaders`` can stop."""

    def __iter__(self):
        iterator = super().__iter__()
        track_iterator(iterator)
        return iterator

    def close(self) -> None:
        """Shut the workers down now, persistent ones included (a no-op without workers)."""
        iterator = getattr(self, "_iterator", None)
        if iterator is not None:
            shutdown_iterator(iterator)
            self._iterator = None
