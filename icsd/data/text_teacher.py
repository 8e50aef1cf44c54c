"""The text teacher: a sentence-transformers model that encodes each split's captions once."""
from __future__ import annotations

import numpy as np

from icsd.data.captions import caption_fingerprint
from icsd.data.features import save_feature_matrix


def encode_captions(teacher: str, captions: list[str], batch_size: int = 256, device: str | None = None,
                    show_progress: bool = True) -> np.ndarray:
    """Embed ``captions`` with a sentence-transformers model (name or local path): float32 [N, D]."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(teacher), device=device)
    return model.encode(captions, batch_size=batch_size, convert_to_numpy=True,
                        show_progress_bar=show_progress).astype(np.float32)


def build_text_cache(path: str, teacher: str, captions: list[str], batch_size: int = 256,
                     device: str | None = None, show_progress: bool = True, source: str | None = None) -> None:
    """Encode ``captions`` and write the float16 cache with its sidecar (teacher name, fingerprint).

    ``source`` loads the model from elsewhere (a local copy) while ``teacher`` is the name recorded."""
    features = encode_captions(source or teacher, captions, batch_size, device, show_progress)
    save_feature_matrix(path, features, {"model": teacher, "kind": "text",
                                         "fingerprint": caption_fingerprint(captions)})
