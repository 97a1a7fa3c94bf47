"""Wall-clock times of video frames: ISO 8601 text and epoch seconds, and the range ivt handles.

A video added with a start time gives each of its crops the date-time start + time into the video;
search results show it as ISO 8601, which Python's ``datetime`` can only write for the years 1 to
9999 (UTC). The rule is checked here, in one place: when a video is added (the start with every
frame's time) and when an index is opened (each stored start with its items' times), so no search
meets a time it cannot show.
"""
from __future__ import annotations

from datetime import datetime, timezone

EARLIEST = "0001-01-01T00:00:00Z"
LATEST = "9999-12-31T23:59:59.999Z"


def iso_to_seconds(text: str) -> float:
    """Epoch seconds of an ISO 8601 date-time (``Z`` for UTC; a naive one is UTC); ValueError otherwise."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def seconds_to_iso(seconds: float) -> str | None:
    """Epoch ``seconds`` as UTC ISO 8601 with milliseconds, or None outside :data:`EARLIEST` to
    :data:`LATEST`."""
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


def last_frame_time(fps: object, frame_count: object) -> float:
    """Seconds into a video of its last frame, from its container's frame rate and count (0 when
    either is unknown)."""
    if not (isinstance(fps, (int, float)) and fps > 0 and isinstance(frame_count, int)):
        return 0.0
    return max(frame_count - 1, 0) / fps


def span_problem(start: float, first: float, last: float) -> str | None:
    """Why a video that started at epoch ``start``, with frames ``first`` to ``last`` seconds into
    it, has a time ivt cannot show as a date-time, or None."""
    handled = f"the date-times ivt handles ({EARLIEST} to {LATEST})"
    if seconds_to_iso(start) is None:
        return f"it is outside {handled}"
    if seconds_to_iso(start + first) is None or seconds_to_iso(start + last) is None:
        return f"its frames {first:g} to {last:g} s after it fall outside {handled}"
    return None


def start_time_problem(start_time: object, first: float, last: float) -> str | None:
    """:func:`span_problem` of a stored start time (ISO 8601 text), or why it is not one."""
    try:
        start = iso_to_seconds(start_time) if isinstance(start_time, str) else None
    except ValueError:
        start = None
    if start is None:
        return "it is not an ISO 8601 date-time"
    return span_problem(start, first, last)
