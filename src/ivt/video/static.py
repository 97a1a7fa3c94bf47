"""Dropping detections of background: boxes whose pixels do not change while the video runs.

A person detector fires again and again on some static things (OpenCV's HOG on a parked van in
``vtest.avi``: 77 of the 817 crops of the shipped settings, in 8 broken tracks, some a single
detection long). People move, even when standing: their box's pixels change between frames a
second apart. So a detection is background when the image inside its box is the same in the
neighbouring processed frames (``neighbours`` on each side, as far as the video has them):
grey levels, the box resized to 16 x 32, each mean removed (a cloud or the camera's gain changes
the whole box at once), mean absolute difference to every neighbour at most ``max_change``.

On the labelled ``vtest.avi`` frames (``benchmarks/detector.py``) the van's boxes change by 0.3-3.3
grey levels, labelled people by 21 or more; ``max_change=8`` sits between. Deciding a frame's
detections needs the frames after it, so crops come ``neighbours`` processed frames late; only
small grey copies of those frames are kept.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from ivt.video.detect import Detection
from ivt.video.reader import Frame

THUMB = (16, 32)  # width, height a box is compared at


def _thumb(grey: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
    x, y, w, h = box
    region = grey[max(0, y):max(0, y + h), max(0, x):max(0, x + w)]
    if region.size == 0:
        return None
    small = cv2.resize(region, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)
    return small - small.mean()


def box_change(grey: np.ndarray, others: Iterable[np.ndarray], box: tuple[int, int, int, int]) -> float | None:
    """The largest change of ``box``'s pixels between ``grey`` and each of ``others`` (mean
    absolute difference of mean-removed 16 x 32 grey thumbnails); None without another frame."""
    here = _thumb(grey, box)
    if here is None:
        return None
    changes = [float(np.abs(t - here).mean()) for t in (_thumb(o, box) for o in others) if t is not None]
    return max(changes) if changes else None


def drop_static(frames: Iterable[tuple[Frame, list[Detection]]], neighbours: int = 2,
                max_change: float = 8.0) -> Iterator[tuple[Frame, list[Detection]]]:
    """The same frames in the same order, each without its detections on background.

    A detection is kept when there is no neighbouring frame to compare with (a one-frame video).
    """
    if neighbours < 1 or max_change < 0:
        raise ValueError(f"need neighbours >= 1 and max_change >= 0 (got {neighbours}, {max_change})")
    pending: deque[tuple[Frame, list[Detection], np.ndarray]] = deque()   # not yet yielded
    before: deque[np.ndarray] = deque(maxlen=neighbours)                    # grey of the last yielded

    def judged() -> tuple[Frame, list[Detection]]:
        frame, detections, grey = pending.popleft()
        others = [*before, *(g for _, _, g in list(pending)[:neighbours])]
        before.append(grey)
        kept = []
        for d in detections:
            change = box_change(grey, others, d.box)
            if change is None or change > max_change:
                kept.append(d)
        return frame, kept

    for frame, detections in frames:
        pending.append((frame, detections, cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)))
        if len(pending) > neighbours:          # the oldest pending frame has all its neighbours now
            yield judged()
    while pending:
        yield judged()
