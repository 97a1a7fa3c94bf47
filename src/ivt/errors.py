"""One error hierarchy for everything that is the user's input at fault.

:class:`IvtError` and its subclasses mean "your file, config, checkpoint or image is wrong": the
CLI prints the message (which names the file, entry, field or value) and exits with status 2.
Anything else that escapes (a plain ``ValueError``, ``KeyError``, ...) is a bug in ivt and keeps
its traceback, so internal mistakes are never disguised as user errors. Each class also derives
from the built-in exception a caller would naturally catch (``ValueError``, ``OSError``).
Set ``IVT_DEBUG=1`` to see the traceback of a user error too.
"""
from __future__ import annotations


class IvtError(Exception):
    """Base class: an input the user supplied does not fit (shown as one message, exit 2)."""


class ConfigError(IvtError, ValueError):
    """A configuration key or value that does not exist or does not fit."""


class DataError(IvtError, ValueError):
    """An annotation file, dataset layout or data entry that cannot be used."""


class ImageError(IvtError, OSError):
    """An image file that is missing or cannot be decoded; the message names the file."""


class CheckpointError(IvtError, ValueError):
    """A checkpoint, run directory or weight file that is missing, damaged or does not fit."""


class RunDirError(IvtError, OSError):
    """A run directory that cannot be used as asked (already holds a run, nothing to resume)."""


class TokenizerError(IvtError, ValueError):
    """A tokenizer file that cannot be read, or that lacks what the model needs."""


class TrainingDivergedError(ConfigError, FloatingPointError):
    """Training that diverged (a non-finite loss): the settings (learning rate, precision) do not fit."""


class DeviceError(IvtError, ValueError):
    """A device or precision that this machine cannot provide."""


class IndexStoreError(IvtError, ValueError):
    """An index directory that is missing, damaged, or does not fit the model it is used with."""


class ApiError(Exception):
    """A web-service answer other than 200, with its status and a message for the client (not an
    :class:`IvtError`: the service turns it into a JSON response, the CLI never sees it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: What the CLI reports as one message with exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (IvtError,)
