"""Camera footage: frames (OpenCV), a pluggable person detector (HOG by default), box tracks,
and person crops with their provenance, ready to be indexed."""
from __future__ import annotations

from ivt.video.detect import Detection, Detector, HOGDetector, load_detector
from ivt.video.people import PersonCrop, extract_people
from ivt.video.reader import Frame, VideoInfo, read_frames, video_info
from ivt.video.track import IoUTracker, iou

__all__ = [
    "Detection", "Detector", "Frame", "HOGDetector", "IoUTracker", "PersonCrop", "VideoInfo",
    "extract_people", "iou", "load_detector", "read_frames", "video_info",
]
