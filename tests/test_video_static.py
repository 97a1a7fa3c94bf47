"""Background detections (a detector firing on something that never moves) are dropped from video
ingest; people, walking or standing, are kept."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ivt.video import extract_people, iou
from ivt.video.detect import PERSON_IN_WINDOW, HOGDetector
from ivt.video.static import box_change, drop_static
from search_helpers import ColourDetector

SIGN = (120, 10, 16, 40)   # a green sign the colour detector takes for a person (x, y, w, h)


def _clip(path: Path, frames: int = 12, brightness_step: int = 0, sway: bool = False) -> None:
    """A walking red figure, a standing blue one (swaying 2 px when ``sway``, else still) and a
    static textured green sign, on a grey floor whose brightness may change every frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (160, 120))
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (SIGN[3], SIGN[2], 1)).astype(np.int16)
    for f in range(frames):
        frame = np.full((120, 160, 3), 100 + brightness_step * f, np.int16)
        x0, y0, w, h = SIGN
        frame[y0:y0 + h, x0:x0 + w] = np.array([40, 150, 40], np.int16) + texture     # BGR green
        for bgr, x, y in (((40, 40, 210), 10 + 4 * f, 20), ((200, 60, 30), 60 + (2 * (f % 2) if sway else 0), 66)):
            frame[y:y + 8, x + 4:x + 10] = (150, 180, 220)
            frame[y + 8:y + 24, x:x + 14] = bgr
            frame[y + 24:y + 40, x + 2:x + 12] = (30, 30, 30)
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()


def _on_sign(crops: list) -> int:
    return sum(1 for c in crops if iou(c.box, SIGN) > 0.5)


@pytest.mark.parametrize("brightness_step", [0, 3])      # 3 grey levels a frame: 15 a second, a passing cloud
def test_a_static_false_positive_is_dropped_and_walkers_are_kept(tmp_path, brightness_step):
    clip = tmp_path / "scene.avi"
    _clip(clip, brightness_step=brightness_step, sway=True)
    kept = list(extract_people(clip, ColourDetector(), every=1, min_height=20))
    everything = list(extract_people(clip, ColourDetector(), every=1, min_height=20, keep_static=True))
    assert _on_sign(everything) == 12                     # the detector fires on the sign in every frame
    assert _on_sign(kept) == 0                            # ... and none of it is indexed
    assert len(kept) == len(everything) - 12 == 24        # the walker and the swaying stander, every frame
    assert [c.frame for c in kept] == sorted(c.frame for c in kept)     # still in frame order


def test_a_person_who_does_not_move_at_all_is_background(tmp_path):
    clip = tmp_path / "still.avi"
    _clip(clip, sway=False)
    kept = list(extract_people(clip, ColourDetector(), every=1, min_height=20))
    assert _on_sign(kept) == 0
    assert not [c for c in kept if iou(c.box, (60, 66, 14, 40)) > 0.5]   # the frozen figure went with it
    assert len(kept) == 12                                # the walker stays, every frame


def test_drop_static_keeps_every_frame_once_in_order_and_judges_short_videos():
    rng = np.random.default_rng(1)
    still = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    box = (5, 5, 20, 30)
    for n in (1, 2, 3, 7, 40):
        out = list(drop_static([(i / 10, still.copy(), [box], i) for i in range(n)]))
        assert [payload for payload, _ in out] == list(range(n))
        # One frame alone cannot be judged (kept); with any neighbour the unchanged box is background.
        assert [keep for _, keep in out] == ([[True]] if n == 1 else [[False]] * n)
    noisy = [(i / 10, rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), [box], i) for i in range(5)]
    assert all(keep == [True] for _, keep in drop_static(noisy))


def _figure_frame(x: int) -> np.ndarray:
    frame = np.full((120, 200), 110, np.uint8)
    frame[20:28, x + 4:x + 10] = 200                     # head
    frame[28:44, x:x + 14] = 40                          # top
    frame[44:60, x + 2:x + 12] = 20                      # trousers
    frame[70:110, 150:166] = 230                         # a white sign that never moves
    frame[80:100, 154:162] = 60
    return frame


def test_neighbours_are_chosen_by_time_so_any_frame_rate_means_the_same():
    """At 30 frames a second a slow walker (5 px a second) is the same in most adjacent frames;
    half a second and a second away it clearly does, and the sign still does not."""
    fps = 30.0
    x = [40 + i // 6 for i in range(90)]                 # 1 px every 6 frames: 5 px a second
    frames = [(i / fps, _figure_frame(x[i]), [(x[i], 20, 14, 40), (150, 70, 16, 40)], i) for i in range(90)]
    judged = dict(drop_static(frames))
    assert all(judged[i] == [True, False] for i in range(90))
    adjacent = dict(drop_static(frames, offsets=(1 / fps,)))          # comparing with the next frames only
    assert sum(keep[0] for keep in adjacent.values()) < 45             # would lose most of the walker
    assert all(keep[1] is False for keep in adjacent.values())


def test_box_change_ignores_a_uniform_brightness_change_and_bad_settings():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 200, (50, 50)).astype(np.uint8)
    assert box_change(grey, [grey + 40], (10, 10, 16, 32)) == pytest.approx(0.0, abs=0.5)
    assert box_change(grey, [255 - grey], (10, 10, 16, 32)) > 40
    assert box_change(grey, [], (10, 10, 16, 32)) is None
    assert box_change(grey, [grey], (60, 60, 5, 5)) is None            # outside the frame
    with pytest.raises(ValueError, match="offsets"):
        list(drop_static([], offsets=(0.0,)))


def test_hog_returns_the_person_not_its_window():
    x, y, w, h = PERSON_IN_WINDOW
    assert (x + w / 2, y + h / 2) == (0.5, 0.5)               # centred in the window
    assert (w * 64, h * 128) == (32, 96)                     # INRIA's 96 px person in a 64 x 128 window
    assert HOGDetector().min_score == 0.5


def test_frames_of_any_shape_are_judged_without_an_opencv_error():
    """Large frames are shrunk for the comparison; a 1 x 4000 frame keeps a column (it used to
    shrink to none, which OpenCV refused with an assertion)."""
    rng = np.random.default_rng(3)
    for height, width in ((4000, 1), (1, 4000), (2000, 3)):
        frames = [(i / 2, rng.integers(0, 255, (height, width), dtype=np.uint8), [(0, 0, width, height)], i)
                  for i in range(4)]
        assert [payload for payload, _ in drop_static(frames)] == [0, 1, 2, 3]
