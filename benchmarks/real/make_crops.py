"""Rebuild the real pedestrian crops of ``queries.json`` from OpenCV's sample video.

The crops were cut from ``vtest.avi`` (Debian's ``opencv-doc`` package,
``/usr/share/doc/opencv-doc/examples/data/vtest.avi``: a fixed camera over a campus walkway,
768x576, 795 frames) by OpenCV's HOG people detector run on every 15th frame; ``queries.json``
keeps each chosen crop's frame and box, so this script cuts exactly the committed images again.
The descriptions and which crops match them were written by hand from the crops.

    apt-get download opencv-doc && dpkg-deb -x opencv-doc_*.deb od
    python benchmarks/real/make_crops.py od/usr/share/doc/opencv-doc/examples/data/vtest.avi
    python benchmarks/real/make_crops.py VIDEO --detect   # list every HOG detection (frame, box, score)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).parent
EVERY = 15          # frames between detections
MAX_HEIGHT = 192    # crops are stored at most this tall (JPEG, quality 90)


def frames(video: Path, wanted: set[int] | None = None) -> dict[int, np.ndarray]:
    """RGB frames of ``video`` by index (every ``EVERY``-th, or only ``wanted``)."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {video}")
    out, i = {}, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if (wanted is None and i % EVERY == 0) or (wanted is not None and i in wanted):
            out[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        i += 1
    return out


def detect(video: Path) -> list[dict]:
    """HOG people detections (OpenCV's default people detector) on every ``EVERY``-th frame."""
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    dets = []
    for index, rgb in frames(video).items():
        rects, weights = hog.detectMultiScale(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), winStride=(4, 4),
                                              padding=(8, 8), scale=1.05)
        for (x, y, w, h), s in zip(rects, np.ravel(weights)):
            dets.append({"frame": index, "box": [int(x), int(y), int(w), int(h)], "score": round(float(s), 2)})
    return dets


def cut(video: Path) -> None:
    """Write every crop of queries.json into ``crops/``."""
    spec = json.loads((HERE / "queries.json").read_text())
    rgb = frames(video, {c["frame"] for c in spec["crops"]})
    (HERE / "crops").mkdir(exist_ok=True)
    for crop in spec["crops"]:
        x, y, w, h = crop["box"]
        img = Image.fromarray(rgb[crop["frame"]][max(0, y):y + h, max(0, x):x + w])
        if img.height > MAX_HEIGHT:
            img = img.resize((round(img.width * MAX_HEIGHT / img.height), MAX_HEIGHT), Image.BICUBIC)
        img.save(HERE / "crops" / crop["file"], "JPEG", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("--detect", action="store_true", help="print all detections as JSON instead")
    args = ap.parse_args()
    if args.detect:
        print(json.dumps(detect(args.video)))
    else:
        cut(args.video)


if __name__ == "__main__":
    main()
