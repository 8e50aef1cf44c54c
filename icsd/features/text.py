"""Text-teacher features: a sentence-transformers model (name or local path) encodes captions once,
batched and resumably, into the project's layout (float16 ``[num_records, D]`` + sidecar with the
teacher's name and the fingerprint of the captions, as ``icsd.data.features.load_text_features`` checks).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from icsd.data.captions import caption_fingerprint
from icsd.errors import ConfigError, DataError
from icsd.features.loop import run_extraction
from icsd.features.writer import FeatureWriter, is_complete

TEXT_MODE = "sentence_embedding"


def load_sentence_model(name_or_path: str, device: Optional[str] = None):
    """A ``SentenceTransformer`` (eval mode), or a ConfigError naming the model."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(name_or_path), device=device)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the sentence-transformers text teacher {str(name_or_path)!r} ({exc}). "
                          f"Without network access, give a local folder of the model instead.") from None


def text_meta(teacher: str, captions: Sequence[str]) -> dict:
    """The sidecar fields of a text cache (``dim``, ``rows``, ``dtype`` are added by the writer)."""
    return {"model": str(teacher), "kind": "text", "mode": TEXT_MODE, "fingerprint": caption_fingerprint(captions)}


def extract_text_features(path: str, teacher: str, captions: Sequence[str], model=None, source: Optional[str] = None,
                          batch_size: int = 256, device: Optional[str] = None, show_progress: bool = True,
                          flush_every: int = 20, max_batches: Optional[int] = None, overwrite: bool = False) -> bool:
    """Encode ``captions`` (already preprocessed) into ``path``; True when the file is complete.

    ``teacher`` is the name recorded in the sidecar; the model is ``model`` when given, else loaded from
    ``source`` (e.g. a local copy) or ``teacher``. An interrupted run continues from its last checkpoint;
    a complete file of the same job is kept unless ``overwrite``.
    """
    captions = list(captions)
    if not captions:
        raise DataError(f"{path}: no captions to encode")
    meta = text_meta(teacher, captions)
    if not overwrite and is_complete(path, meta, len(captions)):
        return True
    writer = FeatureWriter(path, len(captions), meta, flush_every=flush_every, resume=not overwrite)

    def batches(start: int) -> Iterator[np.ndarray]:
        encoder = model if model is not None else load_sentence_model(source or teacher, device)
        for lo in range(start, len(captions), batch_size):
            chunk = captions[lo:lo + batch_size]
            yield encoder.encode(chunk, batch_size=len(chunk), convert_to_numpy=True, show_progress_bar=False)

    return run_extraction(writer, batches, desc=f"text features ({teacher})", show_progress=show_progress,
                          max_batches=max_batches)
