"""The exception types that mean "the user's input is wrong": shown as one message, exit status 2.

Every such error in ivt is a ValueError subclass that names the file/field/value at fault
(DataError, ConfigError, CheckpointError, ...). Set IVT_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
                                                NotADirectoryError, PermissionError)
