"""The text teacher: a sentence-transformers model that encodes each split's captions once.

One implementation: the cache is built by the resumable extraction of ``icsd.features.text`` (the same
code as ``datasets/extract_text_features.py``), so an interrupted build continues where it stopped.
"""
from __future__ import annotations

from icsd.features.text import extract_text_features


def build_text_cache(path: str, teacher: str, captions: list[str], batch_size: int = 256,
                     device: str | None = None, show_progress: bool = True, source: str | None = None) -> None:
    """Encode ``captions`` and write the float16 cache with its sidecar (teacher name, fingerprint).

    ``source`` loads the model from elsewhere (a local copy) while ``teacher`` is the name recorded."""
    extract_text_features(path, teacher, captions, source=source, batch_size=batch_size, device=device,
                          show_progress=show_progress, overwrite=False)
