"""User-facing errors: bad input that must stop a run early with one clear message."""


class ICSDError(Exception):
    """Base class for errors caused by the user's input (config, data, checkpoints).

    ``all_ranks``: every process meets the error alike (it comes from validating shared input), so only
    rank 0 prints it. Errors met by one rank alone (a corrupt image in its shard) set it to False.
    """

    all_ranks = True


class ConfigError(ICSDError):
    """An unknown, misspelled or badly typed config key, or a bad ``--opts`` override."""


class DataError(ICSDError):
    """Missing or malformed annotations, images or teacher features."""


class ImageReadError(DataError):
    """An image that cannot be decoded, met by the rank whose shard holds it."""

    all_ranks = False


class CheckpointError(ICSDError):
    """A missing or unusable checkpoint or weights file."""


class OtherRankFailed(ICSDError):
    """This rank stops because another one met an error (which that rank reports); it exits quietly."""


class TrainingError(ICSDError):
    """A run that cannot continue (for example a non-finite loss)."""
