"""Annotations, captions, teacher features and the datasets built from them (SPEC section 2)."""
