"""The Milvus backend, against milvus-lite (embedded) and a real Milvus standalone server: the same
results and filters as ivt's own store, the collection's self-description, images by id, the CLI
and the API, several ingest workers at once, and a worker killed with -9."""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import ivt
from ivt.cli import main
from ivt.errors import ConfigError, DataError, IndexStoreError
from ivt.files import file_sha256
from ivt.index.build import add_to_index, build_index
from ivt.index.filters import SearchFilter
from ivt.index.gallery import Gallery
from ivt.index.ingest import image_source
from ivt.index.milvus import MilvusSink, connect, count_items, make_address, parse_address
from ivt.index.milvus_gallery import MilvusGallery, filter_expression
from ivt.serve.app import create_app, load_service
from search_helpers import ColourDetector, tiny_trained_run, write_clip
from test_filters import _other_clip

QUERY = "a person in a red shirt, with blue trousers."
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny model, two clips, and ivt's own exact index of the test images and both clips (the
    reference every Milvus index is compared with)."""
    run, data = tiny_trained_run(tmp_path_factory.getbasetemp())
    model = ivt.load(run, device="cpu")
    base = tmp_path_factory.mktemp("milvus")
    write_clip(base / "north.avi", frames=12)
    _other_clip(base / "yard.avi", frames=8)
    local = base / "local"
    _fill(local, model, data, base)
    return {"run": run, "data": data, "model": model, "base": base, "local": Gallery.open(local)}


def _fill(location, model, data, base, **build) -> None:
    build_index(location, model, images=image_source(data, split="test"), progress=False, **build)
    add_to_index(location, model, videos=[base / "north.avi"], detector=ColourDetector(), progress=False,
                 camera="north", start_time="2026-12-03T10:00:00Z")
    add_to_index(location, model, videos=[base / "yard.avi"], detector=ColourDetector(), progress=False)


@pytest.fixture(scope="module", params=["lite", "server"])
def milvus_index(request, setup, tmp_path_factory):
    """The same gallery in Milvus: a milvus-lite file (FLAT) and the standalone server (HNSW)."""
    base = tmp_path_factory.mktemp(f"milvus-{request.param}")
    if request.param == "lite":
        location = f"milvus:{base / 'people.db'}#people"
        build = {}
    else:
        uri = request.getfixturevalue("milvus_server_uri")
        location = f"milvus:{uri}#people_{os.getpid()}"
        build = {"backend_params": {"crops": str(base / "crops"), "index": "HNSW", "M": "16"}}
    _fill(location, setup["model"], setup["data"], setup["base"], force=True, **build)
    gallery = MilvusGallery.open(location)
    _settle(gallery, 48)
    return request.param, location, gallery


def _settle(gallery: MilvusGallery, count: int) -> None:
    """Searches are of bounded staleness (milliseconds each, instead of Strong's ~200 ms): wait
    until they see the ``count`` items written."""
    deadline = time.monotonic() + 30
    while len(gallery) != count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(gallery) == count


def _by_content(gallery, hits) -> list[tuple[str, float]]:
    """(sha256, score) of hits: ids differ between stores, contents do not."""
    out = []
    for h in hits:
        sha = h.id if isinstance(h.id, str) else gallery.items[h.id].sha256
        out.append((sha, round(h.score, 5)))
    return out


FILTERS = [None, SearchFilter.make(["north"]), SearchFilter.make(["yard"]), SearchFilter.make(["north", "yard"]),
           SearchFilter.make(after="2026-12-03T10:00:01Z", before="2026-12-03T10:00:02+00:00"),
           SearchFilter.make(before=0.4), SearchFilter.make(after=1.0, cameras=["north"]),
           SearchFilter.make(min_score=0.0)]


def test_results_and_filters_equal_ivts_own_store(setup, milvus_index):
    _, _, gallery = milvus_index
    local = setup["local"]
    assert len(gallery) == len(local) == 8 + 24 + 16
    q = setup["model"].encode_texts([QUERY])[0].numpy()
    for where in FILTERS:
        for k in (3, 10, 60):
            mine, theirs = gallery.search(q, k, where=where), local.search(q, k, where=where)
            assert _by_content(gallery, mine) == _by_content(local, theirs), (where, k)
    # no starvation: the 24 north crops come back whatever k asks, though images outrank them
    north = SearchFilter.make(["north"])
    assert [len(gallery.search(q, k, where=north)) for k in (5, 24, 40)] == [5, 24, 24]
    # per track: the same best crops, with the same track spans
    mine, theirs = gallery.search(q, 6, per_track=True), local.search(q, 6, per_track=True)
    assert _by_content(gallery, mine) == _by_content(local, theirs)
    for a, b in zip(mine, theirs):
        da, db = gallery.describe(a.id, a.track), local.describe(b.id, b.track)
        # the same provenance; a crop's path is in the crop store (ivt's store: under the index's crops/)
        assert {k: v for k, v in da.items() if k != "track"} == {k: v for k, v in db.items() if k != "track"} | (
            {"path": db["path"].removeprefix("crops/")} if "video" in db else {})
    # a track filter keeps that track's crops only (Milvus track ids are unique across workers)
    crop = next(h for h in mine if h.track is not None)
    one = gallery.search(q, 50, where=SearchFilter.make(track=gallery.describe(crop.id)["track"]))
    frames = len(crop.track.items)
    assert frames in (8, 12) and len(one) == frames and {gallery.describe(h.id)["frame"] for h in one} == set(
        range(frames))


def test_filters_are_milvus_expressions_with_quoted_names():
    where = SearchFilter.make(['cam "7"\\b', "gate"], after="2026-12-03T10:00:00Z", before=30, track=5)
    assert filter_expression(where) == (
        'video == true and camera in ["cam \\"7\\"\\\\b", "gate"] and track == 5 and has_wall == true and '
        'wall_time >= 1796292000.000000 and time <= 30.000000')
    assert filter_expression(SearchFilter.make(min_score=0.2)) == ""
    assert filter_expression(SearchFilter.make([" café-北口"])) == 'video == true and camera in ["café-北口"]'


def test_adding_again_adds_nothing_and_the_model_is_checked(setup, milvus_index):
    _, location, gallery = milvus_index
    before = len(gallery)
    report = add_to_index(location, setup["model"], images=image_source(setup["data"], split="test"),
                          videos=[setup["base"] / "north.avi"], detector=ColourDetector(), progress=False)
    assert (report.added, report.already_indexed, report.total) == (0, 8, before)
    assert report.videos[0].get("skipped") is True
    with pytest.raises(IndexStoreError, match=r"was built with model [0-9a-f]{12} .* but other is model 0{12}"):
        gallery.check_model("0" * 64, setup["model"].tokenizer_fingerprint, "other")
    assert gallery.manifest["model"]["fingerprint"] == setup["model"].fingerprint
    assert gallery.manifest["embedding"]["dim"] == setup["model"].embed_dim


def test_images_are_served_by_id_only_while_unchanged(setup, milvus_index):
    _, location, gallery = milvus_index
    client = TestClient(create_app(service=load_service(location, device="cpu")))
    body = client.post("/api/search", json={"text": QUERY, "k": 50, "camera": ["yard"], "before": 0.4}).json()
    assert len(body["results"]) == 6 and {h["provenance"]["camera"] for h in body["results"]} == {"yard"}
    hit = body["results"][0]
    assert len(hit["id"]) == 64 and hit["image_url"] == f"/api/images/{hit['id']}"
    r = client.get(hit["image_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert client.get("/api/images/" + "0" * 64).status_code == 404
    assert client.get("/api/images/..%2F..%2Fetc%2Fpasswd").status_code == 404
    path = gallery.item_file(hit["id"])
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-10] + b"0123456789")
        assert client.get(hit["image_url"]).status_code == 410
    finally:
        path.write_bytes(original)
    assert client.get(hit["image_url"]).status_code == 200
    health = client.get("/healthz").json()
    assert health["backend"] == "milvus" and health["items"] == len(gallery)


def test_find_this_person_frames_and_tracks_as_in_ivts_own_store(setup, milvus_index):
    from ivt.index.query import combined_query, example_item, results
    from ivt.index.same_person import SamePersonSettings

    _, location, gallery = milvus_index
    local = setup["local"]
    crop = next(i for i, item in enumerate(local.items) if item.video is not None)
    sha = local.items[crop].sha256
    mine_means, their_means = gallery.camera_means(), local.camera_means()
    assert mine_means.means.keys() == their_means.means.keys() == {"", "north", "yard"}
    for camera, mean in their_means.means.items():
        np.testing.assert_allclose(mine_means.means[camera], mean, atol=1e-6)
    for per_track, same_person in itertools.product((False, True), (None, SamePersonSettings())):
        theirs = results(local, combined_query(None, example_item(local, str(crop))), 10, per_track,
                         example=example_item(local, str(crop)), same_person=same_person)
        mine = results(gallery, combined_query(None, example_item(gallery, sha)), 10, per_track,
                       example=example_item(gallery, sha), same_person=same_person)
        assert [local.items[h["id"]].sha256 for h in theirs] == [h["id"] for h in mine]
        np.testing.assert_allclose([h["score"] for h in mine], [h["score"] for h in theirs], atol=1e-5)
        assert sha not in [h["id"] for h in mine]
    client = TestClient(create_app(service=load_service(location, device="cpu")))
    frame = client.get(f"/api/frames/{sha}")
    assert frame.status_code == 200 and frame.content == TestClient(create_app(service=load_service(
        setup["local"].directory, device="cpu"))).get(f"/api/frames/{crop}").content
    strip = client.get(f"/api/tracks/{sha}").json()
    assert [i["frame"] for i in strip["items"]] == sorted(i["frame"] for i in strip["items"])
    assert sha in [i["id"] for i in strip["items"]] and strip["count"] == len(local.track_of(crop).items)
    service = load_service(location, device="cpu")        # nothing cached: the strip reads its crops at once
    reads, get = [], service.gallery.client.get
    service.gallery.client.get = lambda *args, **kwargs: reads.append(kwargs.get("ids")) or get(*args, **kwargs)
    assert TestClient(create_app(service=service)).get(f"/api/tracks/{sha}").json() == strip
    assert len(strip["items"]) > 2 and len(reads) <= 2, reads   # the item's own record, then the others'
    body = client.post("/api/search", json={"like": sha, "k": 5}).json()
    assert body["like"] == sha and sha not in [h["id"] for h in body["results"]]


def test_the_cli_builds_adds_and_searches(setup, milvus_index, tmp_path, capsys):
    kind, location, _ = milvus_index
    address = parse_address(location)
    name = address.collection + "_cli"
    params = [f"uri={address.uri}", f"collection={name}", f"crops={tmp_path / 'crops'}"]
    if kind == "server":                   # product quantisation (not in milvus-lite), re-scored exactly
        params += ["index=IVF_PQ", "nlist=4", "m=16"]
    assert main(["index", "build", "--checkpoint", str(setup["run"]), "--backend", "milvus", "--param", *params,
                 "--images", str(setup["data"]), "--split", "test", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"milvus:{address.uri}#{name}: 8 new item(s), 8 in total" in out
    where = f"milvus:{address.uri}#{name}"
    assert main(["index", "add", "--index", where, "--video", str(setup["base"] / "north.avi"), "--camera", "north",
                 "--detector", "search_helpers:ColourDetector", "--device", "cpu", "--quiet"]) == 0
    assert "24 new item(s), 32 in total" in capsys.readouterr().out
    tuning = ["--nprobe", "4"] if kind == "server" else []       # a search parameter of the IVF index
    assert main(["search", QUERY, "--index", where, "--device", "cpu", "--json", "--camera", "north",
                 "--top-k", "30", *tuning]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 24 and all(h["provenance"]["camera"] == "north" for h in hits)
    q = setup["model"].encode_texts([QUERY])[0].numpy()
    north = setup["local"].search(q, 30, where=SearchFilter.make(["north"]))
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in north], abs=1e-5)
    assert main(["search", QUERY, "--index", where, "--device", "cpu", "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "milvus search" in table and hits[0]["id"][:12] in table or hits[0]["score"] < 1
    # an existing index is not replaced without --force; mistakes are one line, exit 2
    assert main(["index", "build", "--checkpoint", str(setup["run"]), "--backend", "milvus", "--param", *params,
                 "--images", str(setup["data"]), "--device", "cpu", "--quiet"]) == 2
    assert "already holds an ivt index; add to it with `ivt index add`, or pass --force" in capsys.readouterr().err
    missing = f"milvus:{address.uri}#nothing_here"
    assert main(["search", QUERY, "--index", missing, "--device", "cpu"]) == 2
    assert "no collection nothing_here" in capsys.readouterr().err
    for bad, message in ((["--param", f"uri={address.uri}", "collection=1bad"], "collection '1bad' must start"),
                         (["--param", f"uri={address.uri}", f"collection={name}x", "index=DISKANN"],
                          "index 'DISKANN' is not one of FLAT, HNSW, IVF_FLAT, IVF_SQ8"),
                         (["--param", f"uri={address.uri}", f"collection={name}x", "nlist=0"],
                          "milvus index FLAT has no parameter 'nlist'"),
                         (["--param", "collection=x"], "needs --param uri=URI collection=NAME")):
        assert main(["index", "build", "--checkpoint", str(setup["run"]), "--backend", "milvus", *bad,
                     "--images", str(setup["data"]), "--device", "cpu", "--quiet"]) == 2
        assert message in capsys.readouterr().err
    client = connect(address)
    assert not client.has_collection(name + "x")        # a refused build leaves nothing behind


def test_addresses_are_checked(tmp_path):
    assert str(make_address(str(tmp_path / "a.db"), "people")) == f"milvus:{tmp_path / 'a.db'}#people"
    with pytest.raises(ConfigError, match="milvus:URI#COLLECTION"):
        parse_address("milvus:/tmp/a.db")
    with pytest.raises(ConfigError, match="neither http"):
        make_address(str(tmp_path / "a.txt"), "people")
    with pytest.raises(ConfigError, match="is a directory"):
        make_address(str(tmp_path), "people") if tmp_path.suffix == ".db" else make_address(
            str(_mkdir(tmp_path / "d.db")), "people")
    with pytest.raises(ConfigError, match="must not|must start"):
        make_address("http://localhost:1", "people__ivt_meta")


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# ---------------------------------------------------------------------------------------------
# Several workers on one server


def _worker(location: str, *inputs: str, batch: int = 64, env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "ivt", "index", "add", "--index", location, "--device", "cpu", "--quiet",
            "--detector", "search_helpers:" + ("SlowColourDetector" if env else "ColourDetector"),
            "--batch-size", str(batch), *inputs]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", **(env or {})})


def _expected(setup) -> set[str]:
    return {i.sha256 for i in setup["local"].items}


def _ids(location: str) -> list[str]:
    address = parse_address(location)
    client = connect(address)
    rows = client.query(address.collection, filter="", output_fields=["id"], limit=16384)
    return [r["id"] for r in rows]


def _seeded_index(setup, location: str, tmp_path: Path) -> str:
    """A new server index holding one training image (not among what the workers add); its sha256."""
    folder = tmp_path / "one"
    folder.mkdir()
    source = sorted((setup["data"] / "imgs" / "train").glob("*.jpg"))[0]
    (folder / source.name).write_bytes(source.read_bytes())
    build_index(location, setup["model"], images=image_source(folder), progress=False, force=True,
                backend_params={"crops": str(tmp_path / "crops")})
    return file_sha256(source)


def test_concurrent_workers_lose_nothing_and_add_nothing_twice(setup, milvus_server_uri, tmp_path):
    location = f"milvus:{milvus_server_uri}#race_{os.getpid()}"
    seed = _seeded_index(setup, location, tmp_path)
    base, data = setup["base"], str(setup["data"])
    workers = [_worker(location, "--video", str(base / "north.avi"), "--camera", "north",
                       "--start-time", "2026-12-03T10:00:00Z"),
               _worker(location, "--video", str(base / "yard.avi")),
               _worker(location, "--video", str(base / "yard.avi"), str(base / "north.avi")),
               _worker(location, "--images", data, "--split", "test"),
               _worker(location, "--images", data, "--split", "test")]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0] * 5, [o[1][-2000:] for o in outputs]
    gallery = MilvusGallery.open(location)
    _settle(gallery, 49)
    ids = _ids(location)
    assert len(ids) == len(set(ids)) == 1 + 48 and set(ids) == _expected(setup) | {seed}
    q = setup["model"].encode_texts([QUERY])[0].numpy()
    for where in FILTERS[1:3]:
        got, expected = gallery.search(q, 60, where=where), setup["local"].search(q, 60, where=where)
        _same_scores(_by_content(gallery, got), _by_content(setup["local"], expected))


def _same_scores(got: list[tuple[str, float]], expected: list[tuple[str, float]], tol: float = 4e-3) -> None:
    """The same contents, best first, each with its score to ``tol``. Workers encode only what the
    store lacks, so a crop's batch depends on who won the race; with bf16 weights some CPUs' kernels
    give another batch a score ~1e-3 away (bf16 holds 8 significant bits) and near-ties may swap."""
    assert len(got) == len(dict(got)) and dict(got).keys() == dict(expected).keys()
    assert all(abs(score - dict(expected)[sha]) <= tol for sha, score in got), list(zip(got, expected))
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def test_a_killed_worker_loses_one_batch_at_most_and_a_rerun_adds_the_rest(setup, milvus_server_uri, tmp_path):
    location = f"milvus:{milvus_server_uri}#killed_{os.getpid()}"
    _seeded_index(setup, location, tmp_path)
    address = parse_address(location)
    client = connect(address)
    inputs = ("--video", str(setup["base"] / "north.avi"), "--camera", "north")
    worker = _worker(location, *inputs, batch=4, env={"IVT_TEST_DETECT_SECONDS": "0.4"})
    deadline = time.monotonic() + 120
    while count_items(client, address, consistency="Strong") < 1 + 8 and time.monotonic() < deadline:
        time.sleep(0.2)                                  # a few batches are in
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    held = count_items(client, address, consistency="Strong")
    assert 1 + 8 <= held < 1 + 24, "the worker was killed while it was ingesting"
    rows = client.query(address.collection, filter="video == true", output_fields=["id", "frame"], limit=100,
                        consistency_level="Strong")
    frames = sorted({r["frame"] for r in rows})
    assert frames == list(range(len(frames))), "what is in is a prefix of the video, whole batches"
    rerun = _worker(location, *inputs, batch=4)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    assert f"{1 + 24 - held} new item(s), 25 in total" in out
    _settle(MilvusGallery.open(location), 25)
    ids = _ids(location)
    assert len(ids) == len(set(ids)) == 25
    local_north = {i.sha256 for i in setup["local"].items if i.video is not None and i.video.source == 0}
    assert local_north <= set(ids)


def test_index_settings_are_resolved_and_checked():
    from ivt.index.milvus import new_manifest, resolve_params

    connection, settings = resolve_params({"index": "ivf_pq", "nlist": "64", "token": "secret"})
    assert connection == {"token": "secret"}
    assert settings == {"index": "IVF_PQ", "nlist": 64, "m": 0, "nbits": 8, "nprobe": 32, "rerank": 10}
    assert new_manifest({}, 192, settings, None)["backend"]["params"]["m"] == 48       # dim / 4
    assert new_manifest({}, 100, settings, None)["backend"]["params"]["m"] == 25
    with pytest.raises(ConfigError, match="m=7 must divide the embedding size 192"):
        new_manifest({}, 192, resolve_params({"index": "IVF_PQ", "m": "7"})[1], None)
    with pytest.raises(ConfigError, match="ef_search='1e3' is not an integer"):
        resolve_params({"index": "HNSW", "ef_search": "1e3"})
    with pytest.raises(ConfigError, match="M='-4' must be positive"):
        resolve_params({"index": "HNSW", "M": "-4"})
    assert resolve_params(None)[1] == {"index": "FLAT", "rerank": 1}


# ---------------------------------------------------------------------------------------------
# Failures leave the user's index as it was; names, files and logs


def _collections(location: str) -> list[str]:
    return sorted(connect(parse_address(location)).list_collections())


def test_a_failed_forced_build_keeps_the_old_collection(setup, tmp_path, monkeypatch):
    location = f"milvus:{tmp_path / 'keep.db'}#people"
    model, data = setup["model"], setup["data"]
    build_index(location, model, images=image_source(data, split="test"), progress=False)
    junk = _mkdir(tmp_path / "junk")
    (junk / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="nothing could be indexed"):
        build_index(location, model, images=image_source(junk), progress=False, force=True)

    def broken_write(self, items, embeddings):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(MilvusSink, "put", broken_write)
    with pytest.raises(RuntimeError, match="the disk went away"):
        build_index(location, model, images=image_source(data, split="val"), progress=False, force=True)
    monkeypatch.undo()
    assert _collections(location) == ["people", "people__ivt_meta"]     # no half-built copy either
    gallery = MilvusGallery.open(location)
    _settle(gallery, 8)
    old = {h.id for h in gallery.search(setup["model"].encode_texts([QUERY])[0].numpy(), 50)}
    assert old == {i.sha256 for i in setup["local"].items if i.video is None}
    # a forced build that succeeds replaces the index: the new items only, under the same name
    report = build_index(location, model, images=image_source(data, split="val"), progress=False, force=True)
    assert report.added == report.total == 6 and report.index_dir == location
    assert _collections(location) == ["people", "people__ivt_meta"]
    gallery = MilvusGallery.open(location)
    _settle(gallery, 6)
    assert not old & {h.id for h in gallery.search(setup["model"].encode_texts([QUERY])[0].numpy(), 50)}
    # milvus-lite cannot rename: the new rows are copied under the name; a copy that fails half-way leaves
    # no half index under the name, and the complete new one where the error says
    import ivt.index.milvus as milvus

    copy = milvus._copy_rows

    def copy_then_fail(client, address, source, target):
        copy(client, address, source, target)
        if target.endswith("__ivt_meta"):
            raise RuntimeError("the disk went away")

    monkeypatch.setattr(milvus, "_copy_rows", copy_then_fail)
    with pytest.raises(IndexStoreError, match=r"copying the new index under its name failed \(the disk went "
                                              r"away\); the complete new index is in collection people__ivt_staging"):
        build_index(location, model, images=image_source(data, split="test"), progress=False, force=True)
    assert _collections(location) == ["people__ivt_staging", "people__ivt_staging__ivt_meta"]


class _Records(logging.Handler):
    """Every record that reaches the loggers it is attached to (as a terminal's handler would)."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.names, self.lines = names, []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")

    def __enter__(self) -> _Records:
        for name in self.names:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            logging.getLogger(name).removeHandler(self)


class _ServerNames:
    """The collection names of a Milvus server, as :func:`take_over` uses them; one rename may fail."""

    def __init__(self, names: dict[str, str], failing: tuple[str, str] | None = None) -> None:
        self.names, self.failing = dict(names), failing

    def has_collection(self, name: str) -> bool:
        return name in self.names

    def drop_collection(self, name: str) -> None:
        del self.names[name]

    def rename_collection(self, old: str, new: str) -> None:
        if (old, new) == self.failing:
            raise RuntimeError("rename refused")
        assert new not in self.names
        self.names[new] = self.names.pop(old)


def test_a_server_renames_a_forced_rebuild_into_place_and_back_on_failure():
    from ivt.index.milvus import staging_address, take_over

    address = make_address("http://localhost:19530", "people")
    names = {"people": "old items", "people__ivt_meta": "old meta", "people__ivt_staging": "new items",
             "people__ivt_staging__ivt_meta": "new meta"}
    client = _ServerNames(names)
    take_over(client, staging_address(address), address, {})
    assert client.names == {"people": "new items", "people__ivt_meta": "new meta"}
    client = _ServerNames(names, failing=("people__ivt_staging__ivt_meta", "people__ivt_meta"))
    with pytest.raises(IndexStoreError, match=r"renaming the new collection failed \(rename refused\)"):
        take_over(client, staging_address(address), address, {})
    assert client.names == {"people": "old items", "people__ivt_meta": "old meta"}
    # a swap killed after the old index stepped aside: it is the only copy, so it is restored, not dropped
    killed = {"people__ivt_retired": "old items", "people__ivt_retired__ivt_meta": "old meta",
              "people__ivt_staging": "new items", "people__ivt_staging__ivt_meta": "new meta"}
    client = _ServerNames(killed, failing=("people__ivt_staging", "people"))
    with pytest.raises(IndexStoreError, match=r"renaming the new collection failed"):
        take_over(client, staging_address(address), address, {})
    assert client.names == {"people": "old items", "people__ivt_meta": "old meta"}


def test_an_index_milvus_cannot_make_leaves_nothing_and_no_raw_milvus_logs(setup, tmp_path):
    import pymilvus  # noqa: F401 - configures its loggers on import (handlers added before would be dropped)
    from milvus_lite.server_manager import server_manager_instance

    location = f"milvus:{tmp_path / 'hnsw.db'}#people"
    test_images = image_source(setup["data"], split="test")
    with _Records("", "pymilvus", "pymilvus.milvus_client") as logged:
        with pytest.raises(IndexStoreError, match=r"creating the collection failed \(invalid index type: HNSW"):
            build_index(location, setup["model"], images=test_images, backend_params={"index": "HNSW"},
                        progress=False)
        server_manager_instance.release_server(str(tmp_path / "none.db"))     # milvus-lite warns on the root logger
    assert logged.lines == []
    assert _collections(location) == []             # nothing half-made: the next build needs no --force


def test_reading_a_missing_database_creates_nothing(setup, tmp_path, capsys):
    from ivt.index.query import index_manifest, open_gallery

    missing = tmp_path / "x" / "a" / "b" / "new.db"
    for read in (open_gallery, index_manifest):
        with pytest.raises(IndexStoreError, match=f"no Milvus database {missing}; build the index"):
            read(f"milvus:{missing}#people")
    assert main(["search", QUERY, "--index", f"milvus:{missing}#people", "--device", "cpu"]) == 2
    assert f"no Milvus database {missing}" in capsys.readouterr().err
    assert main(["index", "add", "--index", f"milvus:{missing}#people", "--images", str(setup["data"]),
                 "--device", "cpu", "--quiet"]) == 2
    assert f"no Milvus database {missing}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_database_under_a_regular_file_is_a_clear_error(setup, tmp_path, capsys):
    blocker = tmp_path / "FILE.png"
    blocker.write_bytes(b"png")
    for uri in (blocker / "x.db", blocker / "sub" / "x.db"):
        assert main(["index", "build", "--checkpoint", str(setup["run"]), "--images", str(setup["data"]),
                     "--backend", "milvus", "--param", f"uri={uri}", "collection=c", "--device", "cpu",
                     "--quiet"]) == 2
        assert f"error: milvus: cannot write '{uri}': {blocker} is not a directory" in capsys.readouterr().err
        assert main(["search", QUERY, "--index", f"milvus:{uri}#c", "--device", "cpu"]) == 2
        assert f"error: no Milvus database {uri}; build the index" in capsys.readouterr().err
    assert blocker.read_bytes() == b"png"


def _manifest_row(client, address) -> dict:
    return client.query(address.meta, filter='key == "manifest"', output_fields=["value"])[0]["value"]


DAMAGES = [
    (lambda m: m.pop("backend"), "lacks field backend"),
    (lambda m: m.update(backend={"name": "milvus"}), "field backend needs params"),
    (lambda m: m["backend"]["params"].update(index="DISKANN"), "field backend has index 'DISKANN'"),
    (lambda m: m["backend"]["params"].pop("rerank"), "field backend lacks parameter rerank"),
    (lambda m: m["backend"]["params"].update(rerank="many"), "field backend has rerank='many'"),
    (lambda m: m["backend"]["params"].update(nprobe=4), "field backend has parameter(s) nprobe, unknown"),
    (lambda m: m.update(backend={"name": "exact", "params": {}}), "field backend names 'exact'"),
    (lambda m: m.update(backend=[]), "field backend names []"),
    (lambda m: m.pop("embedding"), "lacks field embedding"),
    (lambda m: m.update(embedding={"dim": "8"}), "field embedding needs a positive integer dim"),
    (lambda m: m.update(crops=5), "field crops must be a directory or null"),
    (lambda m: m.pop("model"), "lacks field model"),
    (lambda m: m["model"].pop("checkpoint"), "field model needs a fingerprint and a checkpoint"),
    (lambda m: m.update(tokenizer="x"), "field tokenizer needs a fingerprint"),
]


def test_a_damaged_manifest_is_named_not_a_traceback(tmp_path):
    from ivt.index.milvus import _put_meta, create_collections, new_manifest, read_manifest, resolve_params

    address = make_address(str(tmp_path / "m.db"), "people")
    client = connect(address, create=True)
    entries = {"model": {"fingerprint": "f" * 64, "checkpoint": "/runs/x"}, "tokenizer": {"fingerprint": "t" * 64}}
    create_collections(client, address, new_manifest(entries, 8, resolve_params(None)[1], None))
    good = read_manifest(client, address)
    for damage, message in DAMAGES:
        manifest = json.loads(json.dumps(good))
        damage(manifest)
        _put_meta(client, address, "manifest", manifest)
        with pytest.raises(IndexStoreError) as raised:
            read_manifest(client, address)
        assert str(raised.value).startswith(f"{address}: damaged index: the manifest in collection people__ivt_meta ")
        assert message in str(raised.value), message



def test_a_stored_start_time_search_cannot_show_is_named_when_the_index_opens(tmp_path):
    """A video whose start (or last frame) falls past the year 9999 refuses the index when it is opened,
    naming the video and the field, so no search (and no API request) meets it later."""
    from ivt.index.milvus import _put_meta, create_collections, new_manifest, read_manifest, resolve_params

    address = make_address(str(tmp_path / "t.db"), "people")
    client = connect(address, create=True)
    entries = {"model": {"fingerprint": "f" * 64, "checkpoint": "/runs/x"}, "tokenizer": {"fingerprint": "t" * 64}}
    create_collections(client, address, new_manifest(entries, 8, resolve_params(None)[1], None))
    video = {"name": "north.avi", "sha256": "ab" * 32, "fps": 10.0, "frame_count": 30, "complete": True}
    _put_meta(client, address, "source:" + "ab" * 32, {**video, "start_time": "2026-12-03T10:00:00.000+00:00"})
    read_manifest(client, address)
    for start, problem in (("9999-12-31T23:59:58.000+00:00", "its frames 0 to 2.9 s after it fall outside"),
                           ("10000-01-01", "it is not an ISO 8601 date-time")):
        _put_meta(client, address, "source:" + "ab" * 32, {**video, "start_time": start})
        with pytest.raises(IndexStoreError) as raised:
            read_manifest(client, address)
        assert str(raised.value).startswith(f"{address}: damaged index: video 'north.avi' (row source:abab")
        assert f"field start_time {start!r}: {problem}" in str(raised.value)


def test_a_damaged_item_record_is_named_with_the_item_and_field(setup, tmp_path):
    """An item whose stored record lacks a field (or holds a wrong one) is a damaged index naming the item,
    the collection and the field, not a KeyError, when the item is read."""
    location = f"milvus:{tmp_path / 'items.db'}#people"
    build_index(location, setup["model"], images=image_source(setup["data"], split="test"), progress=False)
    gallery = MilvusGallery.open(location)
    _settle(gallery, 8)
    item_id = gallery.search(setup["model"].encode_texts([QUERY])[0].numpy(), 1)[0].id
    row = gallery.client.get(gallery.address.collection, ids=[item_id])[0]
    for damage, field in ((lambda r: r.pop("width"), "field width is missing"),
                          (lambda r: r.update(height="tall"), "field height is bad"),
                          (lambda r: r.update(video={"frame": 3}), "field video.time is missing")):
        record = json.loads(json.dumps(row["record"]))
        damage(record)
        gallery.client.upsert(gallery.address.collection, [{**row, "record": record}])
        fresh = MilvusGallery.open(location)
        with pytest.raises(IndexStoreError) as raised:
            fresh.describe(item_id)
        assert str(raised.value).startswith(f"{location}: damaged index: item {item_id[:12]} of collection "
                                            f"people: {field}"), str(raised.value)

def test_camera_names_match_and_are_bounded_alike_in_both_stores(setup, tmp_path):
    base = _mkdir(tmp_path / "clips")
    write_clip(base / "one.avi", frames=3)
    _other_clip(base / "two.avi", frames=3)
    _other_clip(base / "three.avi", frames=4)      # frames 0-2 are two.avi's (held already): 2 new crops
    longest = "北" * 256                       # 768 bytes in UTF-8: kept whole by both stores
    clips = {" café-北口 ": base / "one.avi", 'gate "7" \\ b': base / "two.avi", longest: base / "three.avi"}
    q = setup["model"].encode_texts([QUERY])[0].numpy()
    for location in (tmp_path / "local", f"milvus:{tmp_path / 'cams.db'}#cams"):
        with pytest.raises(DataError, match=r"--camera '北北北.*': 257 characters, more than 256"):
            build_index(location, setup["model"], videos=[base / "one.avi"], camera=longest + "x",
                        detector=ColourDetector(), progress=False)
        for i, (camera, clip) in enumerate(clips.items()):
            (add_to_index if i else build_index)(location, setup["model"], videos=[clip], camera=camera,
                                                 detector=ColourDetector(), progress=False)
        gallery = MilvusGallery.open(location) if isinstance(location, str) else Gallery.open(location)
        if isinstance(location, str):
            _settle(gallery, 14)
        for name, count in (("café-北口", 6), (" café-北口", 6), ('gate "7" \\ b', 6), (longest, 2)):
            hits = gallery.search(q, 50, where=SearchFilter.make([name]))
            assert len(hits) == count, (location, name)
            assert {gallery.describe(h.id)["camera"] for h in hits} == {name.strip()}, (location, name)
        assert len(gallery.search(q, 50, where=SearchFilter.make(["café-北口", 'gate "7" \\ b']))) == 12
