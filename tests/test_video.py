"""Camera footage: frame reading, the HOG detector on people it can see, IoU tracks, crops."""
from __future__ import annotations

import re
from collections import Counter

import cv2
import numpy as np
import pytest
from PIL import Image

from ivt.errors import ConfigError, DataError
from ivt.video import Detection, HOGDetector, IoUTracker, extract_people, iou, load_detector, read_frames, video_info
from ivt.video.people import check_frame_size, crop_box
from search_helpers import ColourDetector, write_clip


def test_read_frames_every_n_with_times(tmp_path):
    clip = tmp_path / "walk.avi"
    write_clip(clip, frames=12, fps=5.0)
    info = video_info(clip)
    assert (info.width, info.height, info.fps) == (160, 120, 5.0)
    frames = list(read_frames(clip, every=3))
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.6, 1.2, 1.8])
    assert frames[0].image.shape == (120, 160, 3) and frames[0].image.dtype == np.uint8
    # RGB order: the first figure's top is red.
    assert frames[0].image[30, 17].tolist()[0] > 150 > frames[0].image[30, 17].tolist()[2] + 50
    assert [f.index for f in read_frames(clip, every=5, limit=2)] == [0, 5]


def test_unreadable_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(DataError, match="bad.avi"):
        list(read_frames(bad))
    with pytest.raises(DataError, match="not found"):
        video_info(tmp_path / "missing.avi")
    with pytest.raises(DataError, match="every"):
        list(read_frames(bad, every=0))


def test_iou_and_tracker_link_overlapping_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    tracker = IoUTracker(iou_threshold=0.3, max_gap=1)
    assert tracker.update(0, [(0, 0, 10, 20), (50, 0, 10, 20)]) == [0, 1]
    # Both move a little; listed in the other order: ids follow the boxes, not the order.
    assert tracker.update(1, [(52, 0, 10, 20), (2, 0, 10, 20)]) == [1, 0]
    # Track 0 is missed for one frame (allowed gap), then found again; a far box starts track 2.
    assert tracker.update(2, [(54, 0, 10, 20)]) == [1]
    assert tracker.update(3, [(3, 0, 10, 20), (56, 0, 10, 20), (120, 0, 10, 20)]) == [0, 1, 2]
    # After more than max_gap missed frames a track ends: the same place gives a new id.
    tracker.update(4, [])
    tracker.update(5, [])
    assert tracker.update(6, [(3, 0, 10, 20)]) == [3]


def test_tracker_follows_a_fast_walker_by_its_velocity():
    tracker = IoUTracker(iou_threshold=0.3, max_gap=1)
    xs = [0, 5, 13, 21, 29, 45]          # 5 px, then 8 px per frame, then a missed frame (2 x 8)
    steps = [0, 1, 2, 3, 4, 6]
    ids = [tracker.update(s, [(x, 0, 10, 20)])[0] for s, x in zip(steps, xs)]
    assert ids == [0] * 6
    assert iou((13, 0, 10, 20), (5, 0, 10, 20)) < 0.3      # without the prediction it would break here


def test_crop_box_adds_margin_and_clips():
    assert crop_box((10, 20, 10, 40), 0.1, 100, 100) == (9, 16, 21, 64)
    assert crop_box((0, 0, 10, 40), 0.5, 12, 50) == (0, 0, 12, 50)


def test_people_of_a_clip_with_a_plugged_in_detector(tmp_path):
    clip = tmp_path / "walk.avi"
    truth = write_clip(clip, frames=12)
    crops = list(extract_people(clip, ColourDetector(), every=2, margin=0.1, min_height=20))
    assert len(crops) == 2 * 6
    assert [c.frame for c in crops[::2]] == [0, 2, 4, 6, 8, 10]
    # Boxes match the drawn figures; two tracks, each one figure (its colour) all along.
    for crop in crops:
        expected = [b for b in truth[crop.frame] if iou(b[:4], crop.box) > 0.6]
        assert len(expected) == 1, (crop.frame, crop.box)
    tracks = Counter(c.track for c in crops)
    assert sorted(tracks.values()) == [6, 6]
    for track in tracks:
        tops = {"red" if np.asarray(c.image)[12, c.image.width // 2, 0] > 150 else "blue"
                for c in crops if c.track == track}
        assert len(tops) == 1
    assert crops[0].image.size == (16, 48)  # 14 x 40 box + 10 % margin, clipped


def _synth_person(tmp_path):
    """A SynthPedes image that HOG detects (the best-scoring of a few), as an RGB array."""
    from ivt.synth.generate import generate_synthpedes

    generate_synthpedes(tmp_path / "sp", 4, 1, image_size=(192, 72))
    detector = HOGDetector(upscale=1.0, min_score=0.0)
    best, best_score = None, -1.0
    for path in sorted((tmp_path / "sp" / "imgs").rglob("*.jpg")):
        person = np.asarray(Image.open(path).convert("RGB"))
        canvas = np.full((260, 320, 3), 128, np.uint8)
        canvas[30:222, 100:172] = person
        score = max((d.score for d in detector(canvas) if iou(d.box, (100, 30, 72, 192)) > 0.3), default=-1.0)
        if score > best_score:
            best, best_score = person, score
    return best, best_score


def test_hog_finds_a_person_and_the_pipeline_tracks_it(tmp_path):
    person, score = _synth_person(tmp_path)
    assert score >= 1.0  # HOG sees SynthPedes figures as people
    clip = tmp_path / "person.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 260))
    for f in range(8):
        frame = np.full((260, 320, 3), 128, np.uint8)
        frame[30:222, 40 + 8 * f:112 + 8 * f] = person[:, :, ::-1]
        writer.write(frame)
    writer.release()
    crops = list(extract_people(clip, HOGDetector(upscale=1.0), every=1))
    on_person = [c for c in crops if iou(c.box, (40 + 8 * c.frame, 30, 72, 192)) > 0.3]
    assert len(on_person) >= 6                       # found in most frames
    assert len({c.track for c in on_person}) == 1    # and linked into one track
    assert {c.frame for c in on_person} <= set(range(8))


def test_load_detector_by_name_and_import_path():
    assert isinstance(load_detector("hog"), HOGDetector)
    custom = load_detector("search_helpers:make_colour_detector")
    assert custom.name == "colour-stub"
    assert custom(np.zeros((10, 10, 3), np.uint8)) == []
    with pytest.raises(ConfigError, match="package.module:factory"):
        load_detector("yolo")
    with pytest.raises(ConfigError, match="cannot import"):
        load_detector("no_such_module_xyz:make")
    with pytest.raises(ConfigError, match="returned"):
        load_detector("search_helpers:free_port")


def test_detection_is_a_value():
    assert Detection((1, 2, 3, 4), 0.5) == Detection((1, 2, 3, 4), 0.5)


def test_tracker_links_tight_person_boxes_by_their_surroundings():
    # A 20 x 60 person box moving 14 px (70 % of its width) per processed frame, first step unknown
    # to the velocity: the boxes themselves barely overlap, their detection windows do.
    boxes = [(100 + 14 * s, 50, 20, 60) for s in range(5)]
    assert iou(boxes[0], boxes[1]) < 0.3
    grown = IoUTracker()
    assert [grown.update(s, [b])[0] for s, b in enumerate(boxes)] == [0] * 5
    tight = IoUTracker(grow=(1.0, 1.0))
    assert len({tight.update(s, [b])[0] for s, b in enumerate(boxes)}) > 1
    with pytest.raises(ValueError, match="grow"):
        IoUTracker(grow=(0.5, 1.0))


#: Frame sizes (width, height) below the HOG window after its 1.5x upscale: OpenCV corrupted its
#: heap on them (segfault or abort), which would end the test run, hence the subprocess.
SMALL_FRAMES = [(100, 50), (1, 1), (10, 10), (20, 40), (30, 200)]

_SMALL_VIDEO_RUN = """
import contextlib, io, json, sys
import numpy as np
from ivt.cli import main
from ivt.errors import DataError
from ivt.video import HOGDetector
run, base = sys.argv[1], sys.argv[2]
for w, h in json.loads(sys.argv[3]):
    try:
        direct = repr(HOGDetector()(np.zeros((h, w, 3), np.uint8)))
    except DataError as exc:
        direct = str(exc)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["index", "build", "--checkpoint", run, "--video", f"{base}/{w}x{h}.avi",
                   "--out", f"{base}/idx{w}x{h}", "--device", "cpu", "--precision", "fp32", "--quiet"])
    print(json.dumps([w, h, direct, rc, err.getvalue()]), flush=True)
"""


def test_videos_with_frames_smaller_than_the_hog_window_are_refused_by_name(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from search_helpers import tiny_trained_run

    run, _ = tiny_trained_run(tmp_path)
    rng = np.random.default_rng(0)
    for w, h in SMALL_FRAMES:
        writer = cv2.VideoWriter(str(tmp_path / f"{w}x{h}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
        for _ in range(20):
            writer.write(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        writer.release()
    proc = subprocess.run([sys.executable, "-c", _SMALL_VIDEO_RUN, str(run), str(tmp_path), json.dumps(SMALL_FRAMES)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"crashed (rc {proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(w, h) for w, h, *_ in results] == SMALL_FRAMES
    for w, h, direct, rc, err in results:
        assert direct == (f"a {w}x{h} frame is smaller than the HOG detector's 64x128 window at upscale 1.5 "
                          f"(it needs frames of at least 43x85 pixels)")
        assert rc == 2
        assert err.splitlines()[-1] == f"ivt index: error: {tmp_path}/{w}x{h}.avi: its frames are {w}x{h} pixels, " + \
            direct.removeprefix(f"a {w}x{h} frame is ")
        assert not (tmp_path / f"idx{w}x{h}").exists()


class _FixedDetector:
    """Answers every frame with ``answer``."""

    name = "fixed"

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def __call__(self, frame: np.ndarray) -> object:
        return self.answer


def test_a_detectors_boxes_are_clipped_to_the_frame_and_its_wrong_answers_named(tmp_path):
    clip = tmp_path / "walk.avi"
    write_clip(clip, frames=2)                           # 160 x 120
    boxes = [Detection((-10, 80, 30, 60), 0.9),           # partly outside: clipped to x 0-20, y 80-120
             Detection((500, 10, 40, 80), 0.8),           # wholly outside: no crop
             Detection((150, -50, 10, 20), 0.7)]          # above the frame: no crop
    crops = list(extract_people(clip, _FixedDetector(boxes), keep_static=True))
    assert [(c.frame, c.box, c.image.size) for c in crops] == [(0, (0, 80, 20, 40), (22, 44)),
                                                               (1, (0, 80, 20, 40), (22, 44))]
    for answer, shown in ((None, "a NoneType"), ([(1, 2, 3, 4)], "(1, 2, 3, 4)"),
                          ([Detection((0, 0, float("nan"), 40), 1.0)], "Detection(box=(0, 0, nan, 40)")):
        with pytest.raises(ConfigError, match=r"detector 'fixed' returned " + re.escape(shown) +
                           r".*; it must return a list of ivt.video.Detection\(box=\(x, y, w, h\), score\)"):
            list(extract_people(clip, _FixedDetector(answer)))


def test_a_frame_the_detector_cannot_search_is_refused_with_the_video_and_frame(tmp_path):
    clip = tmp_path / "walk.avi"
    write_clip(clip, frames=2)
    with pytest.raises(DataError, match=re.escape(f"{clip} (frame 0): its frames are 160x120 pixels, smaller than "
                                                  f"the HOG detector's 64x128 window at upscale 0.5 (it needs "
                                                  f"frames of at least 127x255 pixels)")):
        list(extract_people(clip, HOGDetector(upscale=0.5)))
    check_frame_size(clip, HOGDetector(), 0, 0)            # a container that does not say its size: frames tell
    with pytest.raises(DataError, match=r"RGB frames \(H, W, 3\) of uint8, got float32 \(200, 100, 3\)"):
        HOGDetector()(np.zeros((200, 100, 3), np.float32))


class _UnnamedDetector:
    name = 5

    def __call__(self, frame: np.ndarray) -> list:
        return []


def _failing_factory() -> None:
    raise FileNotFoundError("weights.pt is missing")


@pytest.mark.parametrize("spec, message", [
    ("os:system", "--detector 'os:system': os.system(command) takes arguments; give a function or class that "
                  "takes none and returns a detector"),
    ("json:loads", "--detector 'json:loads': json.loads(s, *, cls=None, "),
    ("os:sep", "--detector 'os:sep': os.sep is a str, not a function or class that returns a detector"),
    ("test_video:_failing_factory", "--detector 'test_video:_failing_factory': _failing_factory() failed "
                                    "(FileNotFoundError: weights.pt is missing)"),
    ("test_video:_UnnamedDetector", "--detector 'test_video:_UnnamedDetector': _UnnamedDetector() returned "
                                    "_UnnamedDetector, whose `name` is not a non-empty string"),
    ("builtins:iter", "--detector 'builtins:iter': iter() failed (TypeError: "),
])
def test_a_detector_import_path_that_gives_no_detector_is_a_clear_error(spec, message):
    with pytest.raises(ConfigError) as exc:
        load_detector(spec)
    assert str(exc.value).startswith(message)
    assert isinstance(load_detector("search_helpers:ColourDetector"), ColourDetector)   # a class is a factory too


def test_the_cli_refuses_a_detector_that_is_no_factory_with_exit_2(tmp_path, capsys):
    from ivt.cli import main

    clip = tmp_path / "walk.avi"
    write_clip(clip, frames=2)
    assert main(["index", "build", "--checkpoint", str(tmp_path / "run"), "--video", str(clip),
                 "--detector", "os:system", "--out", str(tmp_path / "idx")]) == 2
    assert capsys.readouterr().err == ("ivt index: error: --detector 'os:system': os.system(command) takes "
                                       "arguments; give a function or class that takes none and returns a detector\n")
    assert not (tmp_path / "idx").exists()


def test_a_frame_number_the_video_does_not_have_is_refused_not_replaced(tmp_path):
    from ivt.errors import IndexStoreError
    from ivt.index.frames import read_frame

    clip = tmp_path / "walk.avi"
    write_clip(clip, frames=3)
    assert read_frame(clip, 2).shape == (120, 160, 3)
    for frame in (-1, 3):                                   # OpenCV would seek -1 to frame 0
        with pytest.raises(IndexStoreError, match=re.escape(f"{clip}: no frame {frame}")):
            read_frame(clip, frame)
