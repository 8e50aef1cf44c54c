"""The ICSD dual encoder: an open_clip backbone, PDM + linear cross-modal heads, temperatures."""
from icsd.models.icsd_model import ICSDModel, build_model

__all__ = ["ICSDModel", "build_model"]
