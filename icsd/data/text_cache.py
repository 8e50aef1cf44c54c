"""The text-teacher feature cache: a sentence-transformers model (name or local path) encodes a split's
captions once, batched and resumably, into the project's layout (float16 ``[num_records, D]`` + sidecar
with the teacher's name and the fingerprint of the captions, as
``icsd.data.teacher_features.load_text_features`` checks). Training builds a missing cache on first use
(``ensure_text_cache``); ``python -m icsd.prep extract-text`` builds it ahead with the same code.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional, Sequence

import numpy as np

from icsd.config import DataConfig
from icsd.data.annotations import Split
from icsd.data.build import data_path
from icsd.data.captions import caption_fingerprint
from icsd.data.extraction import run_extraction
from icsd.data.feature_file import FeatureWriter, is_complete, is_written
from icsd.distributed import DistEnv, run_on_main
from icsd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TEXT_MODE = "sentence_embedding"


def load_sentence_model(name_or_path: str, device: Optional[str] = None):
    """A ``SentenceTransformer`` (eval mode), or a ConfigError naming the model."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("the text teacher needs sentence-transformers, which is not installed: "
                          "pip install 'icsd[teachers]' (or pip install sentence-transformers)") from None
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


def ensure_text_cache(data: DataConfig, split: Split, env: DistEnv) -> None:
    """Build ``split``'s text-feature cache when it is missing (the main rank builds, the others wait and
    stop with it if the build fails), with ``data.text_teacher`` loaded from ``data.text_teacher_source`` when
    set (a local copy; the sidecar records the canonical name). An existing cache is left alone: loading
    checks it."""
    path = data_path(data, data.text_features, split.name)

    def build() -> None:
        if is_written(path):
            return
        if data.text_teacher is None:
            raise DataError(f"text feature cache not found: {path}, and data.text_teacher is null so it cannot "
                            f"be built")
        logger.info(f"building the text feature cache {path} with {data.text_teacher} "
                    f"({split.num_captions} captions, once)")
        extract_text_features(path, data.text_teacher, split.captions, source=data.text_teacher_source,
                              batch_size=data.text_teacher_batch_size, device=str(env.device), overwrite=False)

    run_on_main(env, build, "building the text feature cache")
