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


class FileWriteError(ICSDError):
    """A file that could not be written (``no_space``: the disk is full or a quota is reached); the
    previous version of the file, if any, is intact."""

    def __init__(self, message: str, no_space: bool = False):
        super().__init__(message)
        self.no_space = no_space


class RunFolderBusy(ICSDError):
    """Another live run holds the run folder's lease."""


class Stopped(Exception):
    """The run stopped on purpose after saving what it must (a stop signal); the entry point prints the
    message and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def user_message(exc: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries the worker's
    traceback), its last line without the exception's class name."""
    message = str(exc).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message
