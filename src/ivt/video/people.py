"""People in a video: frames -> detections -> background dropped -> tracks -> crops with a margin,
with provenance."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ivt.errors import ConfigError, DataError
from ivt.video.detect import Detection, Detector
from ivt.video.reader import Frame, read_frames
from ivt.video.static import Box, drop_static
from ivt.video.track import IoUTracker


@dataclass(frozen=True)
class PersonCrop:
    """One detected person: the crop (with margin), where it comes from, and its track."""

    image: Image.Image
    frame: int
    time: float
    box: tuple[int, int, int, int]
    track: int
    score: float


def crop_box(box: tuple[int, int, int, int], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h) grown by ``margin`` of its size on every side, clipped to the frame;
    returned as (left, top, right, bottom)."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    return max(0, x - dx), max(0, y - dy), min(width, x + w + dx), min(height, y + h + dy)


def check_frame_size(path: str | Path, detector: Detector, width: int, height: int) -> None:
    """DataError naming the video when ``detector`` cannot search its ``width`` x ``height`` frames
    (a detector may say why through a ``frame_problem(width, height)`` method). A size of 0 (a
    container that does not say) is left to the check of each decoded frame."""
    problem = getattr(detector, "frame_problem", None)
    why = problem(width, height) if callable(problem) and width > 0 and height > 0 else None
    if why is not None:
        raise DataError(f"{path}: its frames are {width}x{height} pixels, {why}")


def in_frame(found: object, detector: Detector, width: int, height: int) -> list[Detection]:
    """What ``detector`` returned for a ``width`` x ``height`` frame, each box clipped to the frame
    (boxes outside it dropped): ConfigError naming the detector unless it is a list of
    :class:`Detection` with finite numbers."""
    wrong = (f"detector {detector.name!r} returned {{}}; it must return a list of "
             f"ivt.video.Detection(box=(x, y, w, h), score)")
    if not isinstance(found, (list, tuple)):
        raise ConfigError(wrong.format(f"a {type(found).__name__}"))
    out = []
    for det in found:
        try:
            x, y, w, h = (float(v) for v in det.box)
            score = float(det.score)
        except (AttributeError, TypeError, ValueError):
            raise ConfigError(wrong.format(repr(det)[:80])) from None
        if not np.isfinite([x, y, w, h, score]).all():
            raise ConfigError(wrong.format(repr(det)[:80]))
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(width, round(x + w)), min(height, round(y + h))
        if x1 > x0 and y1 > y0:
            out.append(Detection((x0, y0, x1 - x0, y1 - y0), score))
    return out


def extract_people(path: str | Path, detector: Detector, every: int = 1, margin: float = 0.1,
                   min_height: int = 32, tracker: IoUTracker | None = None,
                   limit: int | None = None, keep_static: bool = False,
                   on_frame: Callable[[Frame], None] | None = None) -> Iterator[PersonCrop]:
    """Detect, track and crop the people of every ``every``-th frame of a video.

    Detections shorter than ``min_height`` pixels are ignored (too small to describe), and so are
    detections of background (:func:`ivt.video.static.drop_static`) unless ``keep_static``. Track
    ids start at 0 for each video. ``on_frame`` is called after each frame is read and its people
    detected (progress); their crops follow up to a second of video later (background is judged
    on the frames around).
    """
    tracker = tracker or IoUTracker()

    def seen() -> Iterator[tuple[float, np.ndarray, list[Box], tuple[int, float, list[Detection], list[Image.Image]]]]:
        for frame in read_frames(path, every, limit):
            height, width = frame.image.shape[:2]
            check_frame_size(f"{path} (frame {frame.index})", detector, width, height)
            found = in_frame(detector(frame.image), detector, width, height)
            detections = [d for d in found if d.box[3] >= min_height]
            crops = []
            for det in detections:        # cut now: the frame itself is not kept while background is judged
                left, top, right, bottom = crop_box(det.box, margin, width, height)
                crops.append(Image.fromarray(np.ascontiguousarray(frame.image[top:bottom, left:right])))
            if on_frame is not None:
                on_frame(frame)
            yield frame.time, frame.image, [d.box for d in detections], (frame.index, frame.time, detections, crops)

    judged = ((payload, [True] * len(payload[2])) for _, _, _, payload in seen()) if keep_static else \
        drop_static(seen())
    for step, ((index, time, detections, crops), keep) in enumerate(judged):
        people = [(d, c) for d, c, k in zip(detections, crops, keep) if k]
        tracks = tracker.update(step, [d.box for d, _ in people])
        for (det, crop), track in zip(people, tracks):
            yield PersonCrop(crop, index, time, det.box, track, det.score)

