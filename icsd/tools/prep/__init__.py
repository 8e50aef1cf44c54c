"""Dataset preparation and teacher features (docs/data.md): ``python -m icsd.prep <command>``.

Commands (each a module here with ``configure(parser)``, ``run(args)`` (``caches``: ``run_pixels``,
``run_tokens``) and a ``USAGE`` text; the scripts in ``datasets/`` are short entries to the same commands):

- ``karpathy`` / ``albef``: split JSONs from Karpathy's or ALBEF-style annotation files;
- ``extract-image`` (``image``): image-teacher features from open_clip, timm or Unicom, resumable;
- ``extract-text`` (``text``): text-teacher features from a sentence-transformers model, resumable;
- ``convert-pickled`` (``pickled``): the released pickled-dict files to the memory-mapped layout;
- ``resize``: a prepared image cache (shorter side resized) that keeps a GPU fed;
- ``pixels`` / ``tokens`` (``caches``): a config's pixel and token caches, built ahead of training.

The feature-file format itself (matrix + sidecar, the resumable writer) is ``icsd.data.feature_file``'s.
"""
