"""Metadata filters of a search (camera, time, track, minimum score) in every local backend."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

import ivt
from ivt.cli import main
from ivt.errors import DataError
from ivt.index import Gallery
from ivt.index.build import add_to_index, build_index
from ivt.index.filters import SearchFilter, parse_time
from ivt.serve.app import create_app, load_service
from search_helpers import ColourDetector, tiny_trained_run, write_clip
from test_serve import image_source

QUERY = "a person in a red shirt, with blue trousers."


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """The same gallery in an exact and an HNSW index: test images, a 'north' clip that started at
    10:00:00 UTC (12 frames at 5 fps: 0 to 2.2 s) and a clip without camera or start time."""
    run, data = tiny_trained_run(tmp_path_factory.getbasetemp())
    model = ivt.load(run, device="cpu")
    base = tmp_path_factory.mktemp("filters")
    write_clip(base / "north.avi", frames=12)
    _other_clip(base / "yard.avi", frames=8)
    out = {}
    for backend in ("exact", "hnsw"):
        index = base / backend
        build_index(index, model, images=image_source(data, split="test"), backend=backend, progress=False)
        add_to_index(index, model, videos=[base / "north.avi"], detector=ColourDetector(), progress=False,
                     camera="north", start_time="2026-12-03T10:00:00Z")
        add_to_index(index, model, videos=[base / "yard.avi"], detector=ColourDetector(), progress=False)
        out[backend] = index
    return out, model


def _other_clip(path, frames: int) -> None:
    """Two other people (a green and a purple top) walking at 5 fps: other crops than write_clip's,
    so the index does not deduplicate them."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (160, 120))
    for f in range(frames):
        frame = np.full((120, 160, 3), 110, np.uint8)
        for bgr, x, y in (((40, 200, 40), 12 + 3 * f, 22), ((200, 40, 160), 128 - 3 * f, 58)):
            frame[y:y + 8, x + 4:x + 10] = (150, 180, 220)
            frame[y + 8:y + 24, x:x + 14] = bgr
            frame[y + 24:y + 40, x + 2:x + 12] = (30, 30, 30)
        writer.write(frame)
    writer.release()


def _query(model):
    return model.encode_texts([QUERY])[0].numpy()


def _brute(gallery: Gallery, query: np.ndarray, where: SearchFilter, k: int) -> list[int]:
    ids = np.flatnonzero(where.mask(gallery.items, gallery.manifest["sources"]))
    scores = gallery.stored.embeddings[ids] @ query
    return [int(ids[j]) for j in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_filtered_queries_are_exact_and_never_starve(indexes, backend):
    dirs, model = indexes
    gallery = Gallery.open(dirs[backend])
    q = _query(model)
    north = SearchFilter.make(["north"])
    allowed = int(north.mask(gallery.items, gallery.manifest["sources"]).sum())
    assert allowed == 24                                   # 2 people x 12 frames
    # k of them come back even when they rank far below the rest (images outrank video crops here)
    for k in (5, 24, 40):
        hits = gallery.search(q, k, where=north)
        assert [h.id for h in hits] == _brute(gallery, q, north, k) and len(hits) == min(k, allowed)
        assert all(gallery.describe(h.id)["camera"] == "north" for h in hits)
    yard = SearchFilter.make(["yard"])                     # the default camera: the file's stem
    assert len(gallery.search(q, 100, where=yard)) == 16
    both = SearchFilter.make(["north", "yard"])
    assert len(gallery.search(q, 100, where=both)) == 40   # folder images have no camera


def test_time_track_and_score_filters(indexes):
    dirs, model = indexes
    gallery = Gallery.open(dirs["exact"])
    q = _query(model)
    # wall clock: 10:00:01 to 10:00:02 is frames 5..10 of the north clip (0.2 s apart), 2 people each
    window = SearchFilter.make(after="2026-12-03T10:00:01Z", before="2026-12-03T10:00:02+00:00")
    hits = gallery.search(q, 100, where=window)
    assert len(hits) == 12 and {gallery.describe(h.id)["camera"] for h in hits} == {"north"}
    assert all("2026-12-03T10:00:01" <= gallery.describe(h.id)["wall_time"] <= "2026-12-03T10:00:02.000+00:00"
               for h in hits)
    # seconds into the video: both clips (the yard clip has no wall clock, but has seconds)
    early = gallery.search(q, 100, where=SearchFilter.make(before=0.4))
    assert len(early) == 2 * 3 + 2 * 3                     # frames 0, 1, 2 of each clip
    track = gallery.describe(hits[0].id)["track"]
    one = gallery.search(q, 100, where=SearchFilter.make(track=track))
    assert one and all(gallery.describe(h.id)["track"] == track for h in one)
    everything = gallery.search(q, len(gallery))
    cut = everything[5].score
    assert [h.id for h in gallery.search(q, 100, where=SearchFilter.make(min_score=cut))] == \
        [h.id for h in everything if h.score >= cut]


def test_bad_filters_are_clear_errors():
    with pytest.raises(DataError, match="'yesterday' is neither an ISO 8601"):
        SearchFilter.make(after="yesterday")
    with pytest.raises(DataError, match="later than before"):
        SearchFilter.make(after=5, before=2)
    with pytest.raises(DataError, match="min_score must be a cosine"):
        SearchFilter.make(min_score=3.0)
    with pytest.raises(DataError, match="not a finite time"):
        parse_time("nan")
    assert parse_time("2026-12-03T10:00:00") == parse_time("2026-12-03T10:00:00Z") == (1796292000.0, True)


def test_the_cli_and_the_api_filter(indexes, capsys):
    dirs, _ = indexes
    assert main(["search", QUERY, "--index", str(dirs["exact"]), "--device", "cpu", "--json", "--top-k", "30",
                 "--camera", "north", "--after", "2026-12-03T10:00:01Z"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 2 * 7 and all(h["provenance"]["camera"] == "north" for h in hits)
    assert main(["search", QUERY, "--index", str(dirs["exact"]), "--device", "cpu", "--after", "noon"]) == 2
    assert "'noon' is neither an ISO 8601" in capsys.readouterr().err
    client = TestClient(create_app(service=load_service(dirs["exact"], device="cpu")))
    body = client.post("/api/search", json={"text": QUERY, "k": 50, "camera": ["yard"], "before": 0.4}).json()
    assert len(body["results"]) == 6 and {h["provenance"]["camera"] for h in body["results"]} == {"yard"}
    r = client.post("/api/search", json={"text": QUERY, "k": 5, "after": "soon"})
    assert r.status_code == 422 and "neither an ISO 8601" in r.json()["error"]
    body = client.post("/api/search", json={"text": QUERY, "k": 50, "camera": [" yard "], "before": 0.4}).json()
    assert len(body["results"]) == 6                      # surrounding blanks are not part of a name
    for blank in ("", "  "):
        r = client.post("/api/search", json={"text": QUERY, "k": 5, "camera": ["north", blank]})
        assert r.status_code == 422 and r.json()["error"] == f"camera {blank!r}: a camera name cannot be empty"


def test_blank_camera_names_are_refused_before_anything_is_read(indexes, capsys, tmp_path):
    dirs, model = indexes
    assert main(["search", QUERY, "--index", str(tmp_path / "no-index"), "--camera", " "]) == 2
    assert capsys.readouterr().err.strip() == "ivt search: error: camera ' ': a camera name cannot be empty"
    for blank in ("", "\t "):
        with pytest.raises(DataError, match=rf"^--camera {re.escape(repr(blank))}: a camera name cannot be empty$"):
            add_to_index(dirs["exact"], model, videos=[dirs["exact"].parent / "north.avi"], camera=blank,
                         detector=ColourDetector(), progress=False)
    with pytest.raises(DataError, match=r"^camera 'a\\nb': a camera name must be printable"):
        SearchFilter.make(["north", "a\nb"])


def test_camera_and_start_time_are_checked_at_ingest(indexes, tmp_path):
    dirs, model = indexes
    with pytest.raises(DataError, match="wall-clock time of the first frame"):
        add_to_index(dirs["exact"], model, videos=[dirs["exact"].parent / "north.avi"], start_time="12.5",
                     detector=ColourDetector(), progress=False)
    _, data = tiny_trained_run(tmp_path)                   # the session's cached run and data
    with pytest.raises(DataError, match="describe videos"):
        add_to_index(dirs["exact"], model, images=image_source(data, split="test"), camera="x", progress=False)


HANDLED = r"the date-times ivt handles \(0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z\)"


def _files(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_start_time_whose_frames_leave_the_date_range_is_refused_at_add_time(indexes, tmp_path, capsys):
    dirs, _ = indexes
    clip = tmp_path / "late.avi"
    _other_clip(clip, frames=11)                           # 5 fps: frames 0 to 2 s, 3 of them new to the index
    before = _files(dirs["exact"])
    for start, why in (("9999-12-31T23:59:59Z", f" with --video {clip}: its frames 0 to 2 s after it fall outside "),
                       ("9999-12-31T23:59:58.5-00:00", f" with --video {clip}: its frames 0 to 2 s after it fall "
                                                       f"outside "),
                       ("0001-01-01T00:00:00+01:00", ": it is outside ")):
        assert main(["index", "add", "--index", str(dirs["exact"]), "--video", str(clip), "--start-time", start,
                     "--detector", "search_helpers:make_colour_detector", "--quiet"]) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert re.fullmatch(re.escape(f"ivt index: error: --start-time {start!r}{why}") + HANDLED, err), err
    assert _files(dirs["exact"]) == before


def test_frames_past_the_date_range_are_refused_even_when_the_container_understates_its_length(
        indexes, tmp_path, monkeypatch):
    import dataclasses

    import ivt.video

    dirs, model = indexes
    clip = tmp_path / "late.avi"
    _other_clip(clip, frames=11)
    real = ivt.video.video_info
    monkeypatch.setattr(ivt.video, "video_info", lambda path: dataclasses.replace(real(path), frame_count=1))
    before = _files(dirs["exact"])
    with pytest.raises(DataError, match=re.escape(f"{clip} with --start-time 9999-12-31T23:59:59.000+00:00: its "
                                                  f"frames 0 to 1 s after it fall outside ") + HANDLED):
        add_to_index(dirs["exact"], model, videos=[clip], start_time="9999-12-31T23:59:59Z",
                     detector=ColourDetector(), progress=False)
    assert _files(dirs["exact"]) == before


@pytest.mark.parametrize("stored, why", [("9999-12-31T23:59:59.000+00:00", r"its frames [\d.]+ to 2.2 s after it "
                                                                           r"fall outside " + HANDLED),
                                         ("noon", "it is not an ISO 8601 date-time")])
def test_an_index_holding_an_unshowable_start_time_is_refused_as_damaged(indexes, tmp_path, capsys, stored, why):
    import shutil

    from ivt.errors import IndexStoreError

    dirs, _ = indexes
    damaged = tmp_path / "damaged"
    shutil.copytree(dirs["exact"], damaged)
    manifest_path = damaged / (damaged / "CURRENT").read_text().strip() / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    north = next(n for n, s in enumerate(manifest["sources"]) if s.get("start_time"))
    manifest["sources"][north]["start_time"] = stored
    manifest_path.write_text(json.dumps(manifest))
    expected = (re.escape(f"index {damaged}: manifest.json field sources[{north}].start_time {stored!r}: ") + why +
                "; the index was not modified")
    with pytest.raises(IndexStoreError, match=f"^{expected}$"):
        Gallery.open(damaged)
    with pytest.raises(IndexStoreError, match=f"^{expected}$"):
        load_service(damaged, device="cpu")                 # the server refuses to start: no search is a 500
    assert main(["search", QUERY, "--index", str(damaged), "--device", "cpu"]) == 2
    assert re.fullmatch("ivt search: error: " + expected, capsys.readouterr().err.splitlines()[-1])


def test_a_milvus_item_whose_date_time_cannot_be_shown_is_reported_as_a_damaged_index():
    from ivt.errors import IndexStoreError
    from ivt.index.milvus import parse_address
    from ivt.index.milvus_gallery import MilvusGallery

    gallery = MilvusGallery.__new__(MilvusGallery)          # the stored records alone, no server
    gallery.address = parse_address("milvus:/srv/people.db#people")
    video = {"source": "ab" * 32, "frame": 11, "time": 2.2, "box": [1, 2, 3, 4], "track": 0}
    gallery._record = lambda item_id: {"path": "crops/x.jpg", "width": 3, "height": 4, "video": video}
    gallery._span = lambda track: None
    for start, shown in (("2026-12-03T10:00:00.000+00:00", "2026-12-03T10:00:02.200+00:00"),
                         ("9999-12-31T23:59:59.000+00:00", None)):
        gallery._source = lambda sha, start=start: {"name": "north.avi", "start_time": start}
        if shown is not None:
            assert gallery.describe("cd" * 32)["wall_time"] == shown
            continue
        with pytest.raises(IndexStoreError, match=re.escape(
                f"index {gallery.address}: video 'north.avi' field start_time {start!r}: its frames 2.2 to 2.2 s "
                f"after it fall outside ") + HANDLED):
            gallery.describe("cd" * 32)
