"""The exception types that mean "the user's input is wrong" (shown as one message, exit 2)."""
from __future__ import annotations

from ivt.config import ConfigError
from ivt.data.records import DataError


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ConfigError, CheckpointError, FileNotFoundError,
                                                FileExistsError, ValueError)
