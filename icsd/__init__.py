"""ICSD: image-text retrieval with intra-modal soft-label distillation (PDM + ISF) on open_clip."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: ``import icsd`` stays light (no torch); the loader is imported on first use.
    if name == "load_pretrained":
        from icsd.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'icsd' has no attribute {name!r}")
