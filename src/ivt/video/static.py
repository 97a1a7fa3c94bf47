"""Dropping detections of background: boxes whose pixels do not change while the video runs.

A person detector fires again and again on some static things (OpenCV's HOG on a parked van in
``vtest.avi``: 77 of the 817 crops of the shipped settings, in 8 broken tracks, some a single
detection long). People move, even when standing: their box's pixels change within a second. So a
detection is background when the image inside its box is the same half a second and a second
before and after (:data:`OFFSETS`; the nearest processed frames to those times, as far as the video
has them, so the test means the same at any frame rate and ``--every``): grey levels, the box
resized to 16 x 32, each mean removed (a cloud or the camera's gain changes the whole box at once),
mean absolute difference to every one of those frames at most ``max_change``.

On the labelled ``vtest.avi`` frames (``benchmarks/detector.py``) the van's boxes change by 0.3-3.3
grey levels, labelled people by 21 or more; ``max_change=8`` sits between. Deciding a frame's
detections needs the frames up to a second after it, so results come a second of video late; only
small grey copies of the frames are kept meanwhile (at most 960 px on their long side).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import cv2
import numpy as np

Box = tuple[int, int, int, int]
P = TypeVar("P")
OFFSETS = (0.5, 1.0)          # seconds before and after a frame that it is compared with
GREY_SIDE = 960               # the grey copies' long side at most (pixels)
THUMB = (16, 32)              # width, height a box is compared at


def _thumb(grey: np.ndarray, box: Box) -> np.ndarray | None:
    x, y, w, h = box
    region = grey[max(0, y):max(0, y + h), max(0, x):max(0, x + w)]
    if region.size == 0:
        return None
    small = cv2.resize(region, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)
    return small - small.mean()


def box_change(grey: np.ndarray, others: Iterable[np.ndarray], box: Box) -> float | None:
    """The largest change of ``box``'s pixels between ``grey`` and each of ``others`` (mean
    absolute difference of mean-removed 16 x 32 grey thumbnails); None without another frame."""
    here = _thumb(grey, box)
    if here is None:
        return None
    changes = [float(np.abs(t - here).mean()) for t in (_thumb(o, box) for o in others) if t is not None]
    return max(changes) if changes else None


@dataclass
class _Seen(Generic[P]):
    time: float
    grey: np.ndarray
    scale: float
    boxes: Sequence[Box]
    payload: P


def _grey(image: np.ndarray) -> tuple[np.ndarray, float]:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    height, width = grey.shape[:2]
    scale = min(1.0, GREY_SIDE / max(height, width))
    if scale < 1.0:     # at least a pixel each way: a 1 x 4000 frame would shrink to no column at all
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey, scale


def drop_static(frames: Iterable[tuple[float, np.ndarray, Sequence[Box], P]], offsets: Sequence[float] = OFFSETS,
                max_change: float = 8.0) -> Iterator[tuple[P, list[bool]]]:
    """For each ``(time, image, boxes, payload)`` of a video in time order (image RGB or grey): the
    payload and, per box, whether it is kept (True: something changes there) or background.

    A box is kept when the video has no other frame to compare with (a one-frame video). The
    images are not kept, only small grey copies; payloads wait until their frame is judged.
    """
    if not offsets or min(offsets) <= 0 or max_change < 0:
        raise ValueError(f"need positive offsets and max_change >= 0 (got {tuple(offsets)}, {max_change})")
    reach = max(offsets)
    window: deque[_Seen[P]] = deque()       # judged frames still needed as neighbours, then pending ones
    pending = 0                             # index in window of the first frame not yet judged

    def judged(i: int) -> tuple[P, list[bool]]:
        seen = window[i]
        seq = list(window)
        before, after = seq[:i], seq[i + 1:]
        others = {}
        for side, sign in ((before, -1), (after, 1)):
            for offset in offsets:
                if side:
                    near = min(side, key=lambda o: abs(o.time - (seen.time + sign * offset)))
                    others[id(near)] = near.grey
        keep = []
        for box in seen.boxes:
            small = tuple(round(v * seen.scale) for v in box)
            change = box_change(seen.grey, others.values(), small)
            keep.append(change is None or change > max_change)
        return seen.payload, keep

    for time, image, boxes, payload in frames:
        grey, scale = _grey(image)
        window.append(_Seen(float(time), grey, scale, list(boxes), payload))
        while pending < len(window) and window[-1].time >= window[pending].time + reach:
            yield judged(pending)
            pending += 1
        # Judged frames more than `reach` before the next frame to judge are nobody's neighbour any
        # more, except the last of them (the nearest to that time may lie just before it).
        horizon = (window[pending].time if pending < len(window) else window[-1].time) - reach
        while pending > 1 and window[1].time <= horizon:
            window.popleft()
            pending -= 1
    while pending < len(window):
        yield judged(pending)
        pending += 1
