"""The ICSD dual encoder: an open_clip backbone, its cross-modal heads (PDM + linear, or none: CLIP's own
embeddings), the loss terms' temperatures and heads; and the one place that builds it (``build_model``,
``build_model_for`` with checkpoint weights)."""
from icsd.models.icsd_model import ICSDModel, build_model
from icsd.models.loading import build_model_for, load_model_weights

__all__ = ["ICSDModel", "build_model", "build_model_for", "load_model_weights"]
