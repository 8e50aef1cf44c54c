"""ICSD: image-text retrieval with intra-modal soft-label distillation (PDM + ISF) on open_clip."""

__version__ = "0.1.0"
