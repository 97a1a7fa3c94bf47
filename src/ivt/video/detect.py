"""Person detectors: a small protocol, OpenCV's built-in HOG people detector, and loading a
user's own detector by import path (``package.module:factory``)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from ivt.errors import ConfigError


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


class HOGDetector:
    """OpenCV's HOG + linear SVM pedestrian detector (Dalal & Triggs): built into OpenCV, so
    nothing is downloaded.

    Its window finds people about 100 px tall or more; ``upscale`` enlarges the frame first to
    reach smaller ones (1.5 finds the ~90 px people of OpenCV's ``vtest.avi``; cost grows with
    the square). Overlapping boxes are merged by non-maximum suppression, boxes scoring below
    ``min_score`` (the SVM margin) are dropped: on ``vtest.avi`` people score 1-4 and most false
    alarms (parked vans, poles) below 1.
    """

    name = "hog"

    def __init__(self, upscale: float = 1.5, min_score: float = 1.0, nms_iou: float = 0.4,
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

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        height, width = frame.shape[:2]
        image = frame
        if self.upscale != 1.0:
            image = cv2.resize(frame, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        stride = (self.win_stride, self.win_stride)
        rects, weights = self._hog.detectMultiScale(image, winStride=stride, padding=stride, scale=self.scale)
        if len(rects) == 0:
            return []
        boxes = [[float(v) / self.upscale for v in r] for r in rects]
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
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--detector {spec!r}: cannot import it ({exc})") from exc
    detector = factory()
    if not isinstance(detector, Detector):
        raise ConfigError(f"--detector {spec!r}: {attr}() returned {type(detector).__name__}, which has no "
                          f"`name` or is not callable on a frame")
    return detector
