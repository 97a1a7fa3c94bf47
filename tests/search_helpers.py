"""Helpers of the search tests: a tiny trained model (once per session), a gallery on disk, a
synthetic video clip, and a uvicorn server in a thread."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from helpers import write_toy_pedes

#: A model small enough to train in a few seconds on 2 cores that still learns where the shirt
#: and the trousers are (overlapping 16 px patches, stride 8: a 7 x 3 grid on 64 x 32 images).
TINY_RECIPE = ["model.size=tiny", "model.width=96", "model.depth=2", "model.num_heads=4",
               "model.image_size=[64, 32]", "model.patch_stride=8", "train.batch_size=16", "train.epochs=15",
               "train.precision=fp32", "train.threads=2", "data.vocab_size=200", "data.max_text_len=24",
               "train.eval_every=0", "optim.lr=0.001", "loss.name=infonce", "loss.temperature=0.07",
               "train.log_every=1000"]

_CACHE: dict[str, tuple[Path, Path]] = {}


def tiny_trained_run(base: Path) -> tuple[Path, Path]:
    """(run directory, dataset root) of a tiny IVT trained on colour-coded toy people; trained
    once per test session (about 6 s)."""
    if "run" not in _CACHE:
        from ivt.config import load_config
        from ivt.train.trainer import train

        data = write_toy_pedes(base / "search-toy", ids_per_split=(16, 3, 4))
        cfg = load_config(None, [*TINY_RECIPE, f"data.path={data}", f"train.out_dir={base / 'search-run'}"])
        _CACHE["run"] = (train(cfg), data)
    return _CACHE["run"]


def write_clip(path: Path, frames: int = 12, size: tuple[int, int] = (160, 120), fps: float = 5.0) -> list[list[tuple]]:
    """An MJPG clip of two figures walking in opposite directions over a grey floor (a red-top one
    and a blue-top one, 40 px tall); returns each frame's true boxes (x, y, w, h, colour name)."""
    import cv2

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    truth = []
    for f in range(frames):
        frame = np.full((height, width, 3), 110, np.uint8)
        boxes = []
        for name, bgr, x, y in (("red", (40, 40, 210), 10 + 3 * f, 20), ("blue", (200, 60, 30), 130 - 3 * f, 60)):
            frame[y:y + 8, x + 4:x + 10] = (150, 180, 220)        # head
            frame[y + 8:y + 24, x:x + 14] = bgr                  # top
            frame[y + 24:y + 40, x + 2:x + 12] = (30, 30, 30)    # trousers
            boxes.append((x, y, 14, 40, name))
        writer.write(frame)
        truth.append(boxes)
    writer.release()
    return truth


class ColourDetector:
    """A stub person detector for the synthetic clip: connected regions of saturated colour,
    grown to the figure's full height. Plugged in through the Detector protocol."""

    name = "colour-stub"

    def __call__(self, frame: np.ndarray) -> list:
        import cv2

        from ivt.video.detect import Detection

        rgb = frame.astype(np.int16)
        saturated = ((rgb.max(axis=2) - rgb.min(axis=2)) > 100).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(saturated)
        out = []
        for x, y, w, h, area in stats[1:count]:
            if area >= 40:
                out.append(Detection((int(x), int(y) - 8, int(w), int(h) + 24), 1.0))
        return out


def make_colour_detector() -> ColourDetector:
    """The factory `--detector search_helpers:make_colour_detector` loads."""
    return ColourDetector()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app: object) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class SlowColourDetector(ColourDetector):
    """The stub detector, taking ``IVT_TEST_DETECT_SECONDS`` (default 0.3) per frame: a worker
    that is still ingesting when a test kills it."""

    name = "colour-stub"

    def __call__(self, frame: np.ndarray) -> list:
        import os

        time.sleep(float(os.environ.get("IVT_TEST_DETECT_SECONDS", "0.3")))
        return super().__call__(frame)
