"""Errors that the command line reports as one line on stderr (no traceback)."""


class CharLMError(Exception):
    """Base class: a user-facing problem with a clear one-line message."""


class DataError(CharLMError):
    """Missing, empty, undecodable or too-short training data."""


class CheckpointError(CharLMError):
    """A checkpoint that cannot be loaded safely or does not fit the data."""


class TrainingError(CharLMError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""
