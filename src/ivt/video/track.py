"""Linking detections of the same person across frames into tracks, by box overlap (IoU).

Each track remembers its last box and its velocity (pixels per processed frame, from its last two
boxes); a new box joins the track whose predicted box it overlaps most (greedy, highest IoU
first). The prediction matters when frames are skipped (``--every``): a walker moves a good part
of their own width between processed frames, and the plain previous box would no longer overlap.
A track survives ``max_gap`` processed frames without a detection (a miss or a brief occlusion).
Boxes are compared grown by ``grow`` (width, height; about the person's detection window) around
their centre: a tight person box moves by much of its own width between processed frames, and its
overlap with the prediction would be lost where the grown boxes still agree.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Box = tuple[int, int, int, int]  # x, y, width, height


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    box: Box
    step: int
    vx: float = 0.0
    vy: float = 0.0

    def predicted(self, step: int) -> tuple[float, float, float, float]:
        gap = step - self.step
        return self.box[0] + self.vx * gap, self.box[1] + self.vy * gap, self.box[2], self.box[3]


class IoUTracker:
    """Assigns a track id to every box of every processed frame (ids 0, 1, 2, ... in order of
    appearance)."""

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 2, grow: tuple[float, float] = (2.0, 4 / 3)) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if min(grow) < 1.0:
            raise ValueError(f"grow must be >= 1 in width and height, got {grow}")
        self.grow = grow
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self._active: dict[int, _Track] = {}
        self._next = 0

    def _grown(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        gw, gh = self.grow
        x, y, w, h = box
        return x - (gw - 1) * w / 2, y - (gh - 1) * h / 2, gw * w, gh * h

    def update(self, step: int, boxes: Sequence[Box]) -> list[int]:
        """Track ids for ``boxes`` of processed frame number ``step`` (steps must increase)."""
        self._active = {t: tr for t, tr in self._active.items() if step - tr.step <= self.max_gap + 1}
        pairs = sorted(((iou(self._grown(tr.predicted(step)), self._grown(b)), t, j) for t, tr in self._active.items()
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
        for j, raw in enumerate(boxes):
            box = (int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]))
            if j in assigned:
                old = self._active[assigned[j]]
                gap = step - old.step
                self._active[assigned[j]] = _Track(box, step, (box[0] - old.box[0]) / gap, (box[1] - old.box[1]) / gap)
            else:
                assigned[j] = self._next
                self._next += 1
                self._active[assigned[j]] = _Track(box, step)
            ids.append(assigned[j])
        return ids
