"""Dataset preparation and teacher-feature tools (SPEC section 2); the CLIs live in ``datasets/``.

- ``writer``: the resumable float16 ``[N, D]`` writer of the project's feature layout;
- ``loop``: the batched, resumable extraction loop (progress bar, checkpoints, interruption);
- ``image_encoders`` / ``image``: image-teacher features from open_clip, timm or Unicom;
- ``text``: text-teacher features from a sentence-transformers model;
- ``pickled``: the released pickled-dict files converted to the project's layout;
- ``karpathy`` / ``albef`` / ``split_writer``: split JSONs from Karpathy's and ALBEF-style files.
"""
