"""User-facing errors: bad input that must stop a run early with one clear message."""


class ICSDError(Exception):
    """Base class for errors caused by the user's input (config, data, checkpoints)."""


class ConfigError(ICSDError):
    """An unknown, misspelled or badly typed config key, or a bad ``--opts`` override."""


class DataError(ICSDError):
    """Missing or malformed annotations, images or teacher features."""


class CheckpointError(ICSDError):
    """A missing or unusable checkpoint or weights file."""


class TrainingError(ICSDError):
    """A run that cannot continue (for example a non-finite loss)."""
