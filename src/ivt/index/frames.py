"""The frame around a result: the video frame an indexed crop was cut from, with its box drawn.

Frames are served by item id only: the video's path comes from the index's own record, never
from a request, and the file is used only while it still has the sha256 recorded when it was
indexed (checked once per file state: size and modification time). A frame is found by seeking
to its number; the decoder's position is checked, so a container that cannot seek exactly is
read from its start instead of giving a neighbouring frame.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ivt.errors import IndexStoreError
from ivt.files import file_sha256
from ivt.index.store import VideoRef

BOX_COLOUR = (255, 48, 48)        # the drawn box: red (RGB)
CACHE = 32                         # frames kept encoded


class FrameSource(Protocol):
    """What a gallery (ivt's store or Milvus) tells about an item's video."""

    def video_of(self, item_id: Any) -> tuple[dict[str, Any], VideoRef] | None: ...


class FrameNotAvailable(IndexStoreError):
    """The item is not from a video (no frame to show)."""


def read_frame(path: str | Path, index: int) -> np.ndarray:
    """Frame ``index`` of a video as RGB (H, W, 3), exactly that frame (IndexStoreError when the
    video has no such frame)."""
    if index < 0:                     # OpenCV would seek to frame 0 instead
        raise IndexStoreError(f"{path}: no frame {index}")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise IndexStoreError(f"{path}: OpenCV cannot open this video")
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != index:
            cap.release()
            cap = cv2.VideoCapture(str(path))
            for _ in range(index):
                if not cap.grab():
                    break
        ok, bgr = cap.read()
        if not ok or bgr is None:
            raise IndexStoreError(f"{path}: no frame {index}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def draw_box(frame: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """The frame with ``box`` (x, y, w, h) outlined, the line about 1/150 of the frame's height."""
    image = Image.fromarray(frame)
    x, y, w, h = box
    width = max(2, round(image.height / 150))
    ImageDraw.Draw(image).rectangle([x - width, y - width, x + w + width - 1, y + h + width - 1],
                                    outline=BOX_COLOUR, width=width)
    return image


class FrameServer:
    """JPEG frames of indexed crops, with their boxes; thread-safe, a few kept in memory."""

    def __init__(self, gallery: FrameSource, quality: int = 88) -> None:
        self.gallery = gallery
        self.quality = quality
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[int, int]] = {}            # path -> (size, mtime_ns) that hashed right
        self._frames: OrderedDict[Any, bytes] = OrderedDict()

    def jpeg(self, item_id: Any) -> bytes:
        """The frame of ``item_id`` with its box, as JPEG (FrameNotAvailable when the item is not a
        video crop; IndexStoreError when the video is gone or changed)."""
        with self._lock:
            if item_id in self._frames:
                self._frames.move_to_end(item_id)
                return self._frames[item_id]
        found = self.gallery.video_of(item_id)
        if found is None:
            raise FrameNotAvailable(f"item {str(item_id)[:12]} is not from a video")
        source, ref = found
        path = Path(source["path"])
        self._check(path, source.get("sha256", ""))
        image = draw_box(read_frame(path, ref.frame), ref.box)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=self.quality, subsampling=0)   # full-resolution colour: a sharp box
        data = out.getvalue()
        with self._lock:
            self._frames[item_id] = data
            while len(self._frames) > CACHE:
                self._frames.popitem(last=False)
        return data

    def _check(self, path: Path, sha256: str) -> None:
        try:
            stat = path.stat()
        except OSError as exc:
            raise IndexStoreError(f"video {path} is gone ({exc.strerror})") from exc
        state = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._verified.get(str(path)) == state:
                return
        if not path.is_file() or file_sha256(path) != sha256:
            raise IndexStoreError(f"video {path} has changed since it was indexed (sha256 differs)")
        with self._lock:
            self._verified[str(path)] = state
