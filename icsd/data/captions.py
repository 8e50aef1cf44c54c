"""Caption preprocessing exactly as the reference, and a fingerprint of a list of captions."""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

_PUNCTUATION = re.compile(r"[,.'!?\"()*#:;~]")


def preprocess_caption(caption: str, max_words: int = 64) -> str:
    """Lower-case; ``, . ' ! ? " ( ) * # : ; ~`` -> space; ``-`` and ``/`` -> space; ``<person>`` ->
    ``person``; collapse white space; strip; keep the first ``max_words`` words. May return ''."""
    text = _PUNCTUATION.sub(" ", caption.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    words = text.split()
    return " ".join(words[:max_words])


def caption_fingerprint(captions: Iterable[str]) -> str:
    """SHA-256 over the captions in order; any change of text or order changes it."""
    digest = hashlib.sha256()
    for caption in captions:
        digest.update(caption.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
