"""Text for a terminal: user-controlled strings (queries, file names, dataset fields) shown safely.

A file named ``"\\x1b[2J.jpg"`` would clear the screen when printed raw, a newline in a name would
break a table, and bidirectional overrides reorder what is shown. :func:`printable` writes each such
character as a visible escape. JSON output needs none of this (``json.dumps`` escapes it).
"""
from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: C0 controls, DEL, C1 controls, and the Unicode marks that reorder or break displayed text
#: (LRM/RLM, LRE..RLO, LRI..PDI, the line and paragraph separators).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object, keep: str = "") -> str:
    """``str(text)`` with every control character written as a visible escape (``\\x1b``, ``\\n``,
    ``\\u202e``), except those in ``keep`` (e.g. ``"\\n"`` for a message that is several lines by design)."""
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m.group()), str(text))
