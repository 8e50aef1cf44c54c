"""Annotations, captions, teacher features and the datasets built from them (docs/data.md)."""
