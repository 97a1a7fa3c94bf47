"""Person detectors: a small protocol, OpenCV's built-in HOG people detector, and loading a
user's own detector by import path (``package.module:factory``)."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from ivt.errors import ConfigError, DataError


@dataclass(frozen=True)
class Detection:
    """A person box (x, y, width, height) in frame pixels and the detector's confidence."""

    box: tuple[int, int, int, int]
    score: float


@runtime_checkable
class Detector(Protocol):
    """Anything with a ``name`` that maps an RGB frame (H, W, 3) uint8 to person detections."""

    name: str

    def __call__(self, frame: np.ndarray) -> list[Detection]: ...


PERSON_IN_WINDOW = (0.25, 0.125, 0.5, 0.75)
"""Where the person is in a HOG people window (x, y, width, height as fractions of the window)."""


class HOGDetector:
    """OpenCV's HOG + linear SVM pedestrian detector (Dalal & Triggs): built into OpenCV, so
    nothing is downloaded.

    Its 64 x 128 window was trained on INRIA pedestrians standing 96 px tall in its middle, so the
    person is the window's central half in width and three quarters in height
    (:data:`PERSON_IN_WINDOW`): that box is returned, not the window (on the hand-labelled frames
    of ``vtest.avi`` the person sits at 0.25 / 0.125 / 0.53 / 0.72 of the window, median of 62
    matches; the window itself overlaps a labelled person at IoU < 0.5 nearly always).

    At scale 1 it finds people about 96 px tall or more; ``upscale`` enlarges the frame first to
    reach smaller ones (1.5: ~64 px; cost grows with the square). Overlapping boxes are merged by
    non-maximum suppression, boxes scoring below ``min_score`` (the SVM margin) are dropped.
    ``min_score=0.5`` was chosen on half of the labelled ``vtest.avi`` frames together with the
    background filter (:mod:`ivt.video.static`), which removes the static false alarms (a parked
    van scores 1.0-1.3) that a higher threshold was there to remove
    (``benchmarks/detector.py``).
    """

    name = "hog"

    def __init__(self, upscale: float = 1.5, min_score: float = 0.5, nms_iou: float = 0.4,
                 win_stride: int = 8, scale: float = 1.05) -> None:
        if upscale <= 0 or scale <= 1.0 or win_stride <= 0:
            raise ConfigError(f"HOG detector: need upscale > 0, scale > 1, win_stride > 0 "
                              f"(got {upscale}, {scale}, {win_stride})")
        self.upscale = upscale
        self.min_score = min_score
        self.nms_iou = nms_iou
        self.win_stride = win_stride
        self.scale = scale
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def frame_problem(self, width: int, height: int) -> str | None:
        """Why a ``width`` x ``height`` frame cannot be searched, or None: after the upscale it must
        hold the 64 x 128 window (OpenCV corrupts its memory on smaller images)."""
        win_w, win_h = self._hog.winSize
        if round(width * self.upscale) >= win_w and round(height * self.upscale) >= win_h:
            return None
        need = [_smallest_side(side, self.upscale) for side in (win_w, win_h)]
        return (f"smaller than the HOG detector's {win_w}x{win_h} window at upscale {self.upscale:g} "
                f"(it needs frames of at least {need[0]}x{need[1]} pixels)")

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise DataError(f"the HOG detector takes RGB frames (H, W, 3) of uint8, got {frame.dtype} "
                            f"{tuple(frame.shape)}")
        height, width = frame.shape[:2]
        problem = self.frame_problem(width, height)
        if problem is not None:
            raise DataError(f"a {width}x{height} frame is {problem}")
        image = frame
        if self.upscale != 1.0:
            image = cv2.resize(frame, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        stride = (self.win_stride, self.win_stride)
        rects, weights = self._hog.detectMultiScale(image, winStride=stride, padding=stride, scale=self.scale)
        if len(rects) == 0:
            return []
        px, py, pw, ph = PERSON_IN_WINDOW
        up = self.upscale
        boxes = [[(x + px * w) / up, (y + py * h) / up, pw * w / up, ph * h / up]
                 for x, y, w, h in (map(float, r) for r in rects)]
        scores = [float(w) for w in np.ravel(weights)]
        keep = cv2.dnn.NMSBoxes(boxes, scores, self.min_score, self.nms_iou)
        out = []
        for i in np.ravel(keep).tolist() if len(keep) else []:
            x, y, w, h = boxes[i]
            x0, y0 = max(0, round(x)), max(0, round(y))
            x1, y1 = min(width, round(x + w)), min(height, round(y + h))
            if x1 > x0 and y1 > y0:
                out.append(Detection((x0, y0, x1 - x0, y1 - y0), scores[i]))
        return sorted(out, key=lambda d: -d.score)


def _smallest_side(window: int, upscale: float) -> int:
    """The fewest pixels that OpenCV's resize by ``upscale`` (rounded) turns into ``window`` or more."""
    side = max(1, int(window / upscale) - 1)
    while round(side * upscale) < window:
        side += 1
    return side


def load_detector(spec: str) -> Detector:
    """``hog`` (the default), or ``package.module:factory`` where ``factory()`` returns an object
    with a ``name`` that is called on RGB frames and returns :class:`Detection` s."""
    if spec == "hog":
        return HOGDetector()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--detector {spec!r}: use 'hog' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:    # the user's module: whatever its import raises is about their spec
        raise ConfigError(f"--detector {spec!r}: cannot import it ({exc})") from exc
    named = f"{module_name}.{attr}"
    if not callable(factory):
        raise ConfigError(f"--detector {spec!r}: {named} is a {type(factory).__name__}, not a function or class "
                          f"that returns a detector")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):     # some built-ins have none: calling it tells
        signature = None
    if signature is not None:
        try:
            signature.bind()
        except TypeError:
            raise ConfigError(f"--detector {spec!r}: {named}{signature} takes arguments; give a function or "
                              f"class that takes none and returns a detector") from None
    try:
        detector = factory()
    except Exception as exc:    # the user's factory failed (a missing weight file, a wrong object)
        raise ConfigError(f"--detector {spec!r}: {attr}() failed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(detector, Detector):
        raise ConfigError(f"--detector {spec!r}: {attr}() returned {type(detector).__name__}, which has no "
                          f"`name` or is not callable on a frame")
    if not isinstance(detector.name, str) or not detector.name.strip():
        raise ConfigError(f"--detector {spec!r}: {attr}() returned {type(detector).__name__}, whose `name` is "
                          f"not a non-empty string")
    return detector
