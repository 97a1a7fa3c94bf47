"""Linking detections of the same person across frames into tracks, by box overlap (IoU).

Greedy matching, highest overlap first: enough for a fixed camera at a few frames per second,
where a person's box in consecutive processed frames overlaps well. A track survives
``max_gap`` processed frames without a detection (a missed detection or a brief occlusion).
"""
from __future__ import annotations

from collections.abc import Sequence

Box = tuple[int, int, int, int]  # x, y, width, height


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class IoUTracker:
    """Assigns a track id to every box of every processed frame (ids 0, 1, 2, ... in order of
    appearance)."""

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 2) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self._active: dict[int, tuple[Box, int]] = {}   # track -> (last box, last step)
        self._next = 0

    def update(self, step: int, boxes: Sequence[Box]) -> list[int]:
        """Track ids for ``boxes`` of processed frame number ``step`` (steps must increase)."""
        self._active = {t: (box, last) for t, (box, last) in self._active.items()
                        if step - last <= self.max_gap + 1}
        pairs = sorted(((iou(box, b), t, j) for t, (box, _) in self._active.items()
                        for j, b in enumerate(boxes)), reverse=True)
        assigned: dict[int, int] = {}
        used: set[int] = set()
        for overlap, track, j in pairs:
            if overlap < self.iou_threshold:
                break
            if track in used or j in assigned:
                continue
            assigned[j] = track
            used.add(track)
        ids = []
        for j, box in enumerate(boxes):
            if j not in assigned:
                assigned[j] = self._next
                self._next += 1
            ids.append(assigned[j])
            self._active[assigned[j]] = ((int(box[0]), int(box[1]), int(box[2]), int(box[3])), step)
        return ids
