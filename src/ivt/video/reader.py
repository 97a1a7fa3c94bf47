"""Reading video frames with OpenCV (``opencv-python-headless``), every N-th frame, as RGB."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ivt.errors import DataError


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (``frame_count`` may be an estimate)."""

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its number in the video, its time in seconds, RGB pixels (H, W, 3)."""

    index: int
    time: float
    image: np.ndarray


def _open(path: str | Path) -> cv2.VideoCapture:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"video file not found: {p}")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{p}: OpenCV cannot open this file as a video")
    return cap


def video_info(path: str | Path) -> VideoInfo:
    """Frame rate, frame count and size of a video (DataError when it cannot be opened)."""
    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return VideoInfo(Path(path), fps if np.isfinite(fps) and fps > 0 else 0.0,
                         int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()


def read_frames(path: str | Path, every: int = 1, limit: int | None = None) -> Iterator[Frame]:
    """Frames 0, every, 2*every, ... of a video (at most ``limit`` of them), decoded to RGB.

    Skipped frames are only grabbed, not decoded. Times come from the frame rate, or from the
    container's timestamps when it reports no rate. A video without a single decodable frame is
    a DataError.
    """
    if every < 1:
        raise DataError(f"--every must be at least 1, got {every}")
    cap = _open(path)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    fps = fps if np.isfinite(fps) and fps > 0 else 0.0
    index = produced = 0
    try:
        while limit is None or produced < limit:
            if not cap.grab():
                break
            if index % every == 0:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    break
                time = index / fps if fps else float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
                yield Frame(index, time, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                produced += 1
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise DataError(f"{path}: no frame could be decoded from this video")
