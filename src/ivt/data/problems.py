"""Collect the problems found in one input and report them together in one :class:`DataError`.

Users fix a broken annotation file in one pass when they see every problem at once, so readers and
checkers record problems as they go and raise at the end instead of stopping at the first one.
"""
from __future__ import annotations

from ivt.data.records import DataError

MAX_SHOWN = 20


def describe(value: object, limit: int = 40) -> str:
    """A JSON-flavoured description of a value for error messages, e.g. ``string "3"``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= limit else value[: limit - 3] + "..."
        return f"string {text!r}" if value.strip() else f"blank string {value!r}"
    if isinstance(value, list):
        return f"array of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return f"object with {len(value)} key{'s' if len(value) != 1 else ''}"
    return type(value).__name__


class Problems:
    """Problems found in one source (a file or a directory), raised together as one DataError.

    Every problem is counted; the first ``limit`` are shown, one per line, each naming where it is
    (the entry) and what is wrong (the field and the value).
    """

    def __init__(self, source: str, limit: int = MAX_SHOWN) -> None:
        """Start an empty list of problems found in ``source``."""
        self.source = source
        self.limit = limit
        self.count = 0
        self.shown: list[str] = []

    def add(self, where: str, message: str) -> None:
        """Record one problem at ``where`` (e.g. ``entry [3] (a/b.jpg)`` or ``line 7``)."""
        self.count += 1
        if len(self.shown) < self.limit:
            self.shown.append(f"{where}: {message}")

    def __len__(self) -> int:
        """How many problems were recorded (shown or not)."""
        return self.count

    def message(self, what: str) -> str:
        """The report: a summary line, then one problem per line."""
        plural = "s" if self.count != 1 else ""
        lines = [f"{self.source}: {self.count} problem{plural} {what}:"]
        lines += [f"  {line}" for line in self.shown]
        if self.count > len(self.shown):
            lines.append(f"  ... and {self.count - len(self.shown)} more")
        return "\n".join(lines)

    def raise_if_any(self, what: str) -> None:
        """Raise a :class:`DataError` listing the problems, if there are any."""
        if self.count:
            raise DataError(self.message(what))
