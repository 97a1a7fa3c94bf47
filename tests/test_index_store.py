"""The index on disk and its search structures, without a model: atomic commits (also under
SIGKILL), verification on open, exact/approximate search, per-track grouping, path confinement."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ivt.errors import ConfigError, IndexStoreError, IvtError
from ivt.index import store
from ivt.index.backends import build_backend, load_backend, resolve_params
from ivt.index.gallery import Gallery
from ivt.index.store import Item, VideoRef, index_writer, parse_item, read_index

FP = "a" * 64
TOK = "b" * 64


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Person-like embeddings: identities on a 16-d manifold, 4 noisy views each."""
    rng = np.random.default_rng(seed)
    latent = np.repeat(rng.standard_normal((n // 4 + 1, 16)), 4, axis=0)[:n]
    x = (latent + 0.3 * rng.standard_normal((n, 16))) @ rng.standard_normal((16, dim))
    x += 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _manifest(roots: list[str], backend: str = "exact", params: dict | None = None) -> dict:
    return {"created": store.now_iso(), "model": {"fingerprint": FP, "checkpoint": "/nowhere"},
            "tokenizer": {"fingerprint": TOK}, "backend": {"name": backend, "params": params or {}},
            "roots": roots, "sources": []}


def _gallery_files(root: Path, n: int) -> list[Item]:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        data = f"image {i}".encode()
        (root / f"{i:03d}.jpg").write_bytes(data)
        items.append(Item(f"{i:03d}.jpg", hashlib.sha256(data).hexdigest(), 10, 20, root=0, pid=i % 3))
    return items


def _commit(index_dir: Path, embeddings: np.ndarray, items: list[Item], roots: list[str]) -> str:
    with index_writer(index_dir) as writer:
        return writer.commit(_manifest(roots), embeddings, items)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def small_index(tmp_path):
    items = _gallery_files(tmp_path / "imgs", 20)
    emb = _vectors(20, 32)
    _commit(tmp_path / "idx", emb, items, [str(tmp_path / "imgs")])
    return tmp_path / "idx", emb, items


def test_commit_and_read_back(small_index, tmp_path):
    index_dir, emb, items = small_index
    stored = read_index(index_dir)
    assert stored.version == "v000001" and len(stored) == 20
    np.testing.assert_array_equal(stored.embeddings, emb)
    assert stored.items == items
    m = stored.manifest
    assert m["format"] == "ivt-index" and m["embedding"] == {"dim": 32, "count": 20, "dtype": "float32"}
    assert set(m["files"]) == {"embeddings.npy", "items.jsonl"}
    # Later commits keep the live and the previous version only.
    for extra in range(2):
        _commit(index_dir, emb[: 10 + extra], items[: 10 + extra], m["roots"])
    assert sorted(p.name for p in index_dir.iterdir() if p.name.startswith("v")) == ["v000002", "v000003"]
    assert len(read_index(index_dir)) == 11


@pytest.mark.parametrize("damage", ["flip-embedding-byte", "truncate-items", "manifest-count", "pointer-escape",
                                    "missing-file", "manifest-not-json", "item-path-escape"])
def test_a_damaged_index_is_refused_and_left_as_it_is(small_index, damage):
    index_dir, _, _ = small_index
    version = index_dir / "v000001"
    if damage == "flip-embedding-byte":
        data = bytearray((version / "embeddings.npy").read_bytes())
        data[-5] ^= 0x01
        (version / "embeddings.npy").write_bytes(bytes(data))
        expected = "sha256"
    elif damage == "truncate-items":
        (version / "items.jsonl").write_bytes((version / "items.jsonl").read_bytes()[:-40])
        expected = "bytes, the manifest says"
    elif damage == "manifest-count":
        manifest = json.loads((version / "manifest.json").read_text())
        manifest["embedding"]["count"] = 21
        (version / "manifest.json").write_text(json.dumps(manifest))
        expected = "shape"
    elif damage == "pointer-escape":
        (index_dir / "CURRENT").write_text("../../etc\n")
        expected = "not a version name"
    elif damage == "missing-file":
        (version / "items.jsonl").unlink()
        expected = "items.jsonl is missing"
    elif damage == "manifest-not-json":
        (version / "manifest.json").write_text("{not json")
        expected = "not valid JSON"
    else:  # a consistent-looking index whose item points outside its root
        lines = (version / "items.jsonl").read_text().splitlines()
        lines[0] = lines[0].replace('"000.jpg"', '"../../etc/passwd"')
        data = ("\n".join(lines) + "\n").encode()
        (version / "items.jsonl").write_bytes(data)
        manifest = json.loads((version / "manifest.json").read_text())
        manifest["files"]["items.jsonl"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (version / "manifest.json").write_text(json.dumps(manifest))
        expected = "must be relative and inside its root"
    before = _snapshot(index_dir)
    with pytest.raises(IndexStoreError, match=expected) as exc:
        Gallery.open(index_dir)
    assert "not modified" in str(exc.value)
    assert _snapshot(index_dir) == before


def _rewrite_items(version: Path, edit) -> None:
    """Replace the first item record by ``edit(record text)`` and re-record the file's size and
    sha256, so only the record itself is damaged."""
    lines = (version / "items.jsonl").read_text().splitlines()
    lines[0] = edit(lines[0])
    data = ("\n".join(lines) + "\n").encode()
    (version / "items.jsonl").write_bytes(data)
    _edit_manifest(version, lambda m: m["files"].update({"items.jsonl": {"size": len(data),
                                                                          "sha256": hashlib.sha256(data).hexdigest()}}))


def _edit_manifest(version: Path, edit) -> None:
    manifest = json.loads((version / "manifest.json").read_text())
    edit(manifest)
    (version / "manifest.json").write_text(json.dumps(manifest))


DEEP = "[" * 100_000 + "]" * 100_000
DAMAGED_RECORDS = {
    "manifest-is-a-directory": (lambda v: ((v / "manifest.json").unlink(), (v / "manifest.json").mkdir()),
                                r"cannot read .*v000001/manifest.json: Is a directory"),
    "manifest-nested-too-deep": (lambda v: (v / "manifest.json").write_text('{"format": ' + DEEP + "}"),
                                 r"v000001/manifest.json is not valid JSON \(nested too deeply\)"),
    "source-not-an-object": (lambda v: _edit_manifest(v, lambda m: m.update(sources=[5])),
                             r"manifest.json field sources\[0\] must be an object, not int"),
    "source-without-path": (lambda v: _edit_manifest(v, lambda m: m.update(sources=[{"name": "a.avi"}])),
                            r"manifest.json field sources\[0\].path must be a non-empty string"),
    "item-without-width": (lambda v: _rewrite_items(v, lambda line: json.dumps(
                               {k: x for k, x in json.loads(line).items() if k != "width"})),
                           "items.jsonl line 1: width is missing"),
    "item-height-not-a-number": (lambda v: _rewrite_items(v, lambda line: json.dumps(
                                     {**json.loads(line), "height": "tall"})),
                                 "items.jsonl line 1: height 'tall' is not a positive integer"),
    "item-nested-too-deep": (lambda v: _rewrite_items(v, lambda line: DEEP),
                             r"items.jsonl line 1 is not valid JSON \(nested too deeply\)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_RECORDS))
def test_a_damaged_record_is_refused_naming_the_file_and_field(small_index, damage):
    index_dir, _, _ = small_index
    spoil, expected = DAMAGED_RECORDS[damage]
    spoil(index_dir / "v000001")
    before = _snapshot(index_dir)
    with pytest.raises(IndexStoreError, match=expected) as exc:
        Gallery.open(index_dir)
    assert str(exc.value).startswith(f"index {index_dir}: ") and str(exc.value).endswith("the index was not modified")
    assert _snapshot(index_dir) == before


def test_not_an_index_and_a_different_model_are_clear_errors(small_index, tmp_path):
    index_dir, _, _ = small_index
    with pytest.raises(IndexStoreError, match="not an ivt index"):
        read_index(tmp_path / "imgs")
    with pytest.raises(IndexStoreError, match="not found"):
        read_index(tmp_path / "nowhere")
    gallery = Gallery.open(index_dir)
    gallery.check_model(FP, TOK)
    with pytest.raises(IndexStoreError, match=r"built with model aaaaaaaaaaaa .* is model cccccccccccc"):
        gallery.check_model("c" * 64, TOK, "checkpoint X")
    with pytest.raises(IndexStoreError, match="tokenizer bbbbbbbbbbbb"):
        gallery.check_model(FP, "d" * 64)


@pytest.mark.parametrize("stage", range(6))
def test_a_crash_at_any_point_of_a_commit_keeps_the_previous_index(small_index, monkeypatch, stage):
    index_dir, emb, items = small_index
    before = read_index(index_dir)
    calls = {"n": 0}

    class Crash(Exception):
        pass

    def crashing(real):
        def wrapper(*args, **kwargs):
            if calls["n"] == stage:
                raise Crash(f"simulated crash at step {stage}")
            calls["n"] += 1
            return real(*args, **kwargs)
        return wrapper

    # The steps of a commit: write embeddings, items, manifest; rename the version; swap CURRENT.
    monkeypatch.setattr(store, "write_synced", crashing(store.write_synced))
    monkeypatch.setattr(store.os, "rename", crashing(os.rename))
    monkeypatch.setattr(store, "atomic_write", crashing(store.atomic_write))
    new_items = _gallery_files(index_dir.parent / "imgs", 25)
    try:
        _commit(index_dir, _vectors(25, 32, seed=1), new_items, before.manifest["roots"])
        crashed = False
    except Crash:
        crashed = True
    monkeypatch.undo()
    after = read_index(index_dir)
    if crashed:
        assert after.version == before.version and after.items == before.items
        np.testing.assert_array_equal(after.embeddings, before.embeddings)
    else:
        assert len(after) == 25
    # The next commit works and clears what the crash left behind.
    _commit(index_dir, emb, items, before.manifest["roots"])
    assert not list(index_dir.glob(".tmp-*")) and len(read_index(index_dir)) == 20


_WRITER = """
import sys, numpy as np
from ivt.index.store import Item, index_writer, now_iso
index_dir, n = sys.argv[1], int(sys.argv[2])
manifest = {"created": now_iso(), "model": {"fingerprint": "a" * 64}, "tokenizer": {"fingerprint": "b" * 64},
            "backend": {"name": "exact", "params": {}}, "roots": ["/x"], "sources": []}
for round_ in range(1, 10**6):
    emb = np.zeros((n, 64), np.float32)
    emb[:, round_ % 64] = 1.0   # unit rows (an index refuses others), telling the round apart
    items = [Item(f"{i}.jpg", "%064x" % round_, 1, 1, root=0) for i in range(n)]
    with index_writer(index_dir) as writer:
        writer.commit(manifest, emb, items)
    print(round_, flush=True)
"""


def test_sigkill_during_writes_never_leaves_a_broken_index(tmp_path):
    index_dir = tmp_path / "idx"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = np.random.default_rng(0)
    last_round = 0
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(index_dir), "30000"], stdout=subprocess.PIPE,
                                env=env, text=True)
        first = proc.stdout.readline()          # one commit done: the writer is in its loop
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        done = [int(line) for line in (first + out).split()]
        stored = read_index(index_dir)                           # verifies every checksum
        value = int(stored.items[0].sha256, 16)
        assert stored.embeddings.shape == (30000, 64) and (stored.embeddings[:, value % 64] == 1).all()
        assert stored.embeddings.sum() == 30000 and all(i.sha256 == f"{value:064x}" for i in stored.items)
        # The live index is the last completed commit, or the one being committed when killed.
        if done:
            assert value in (done[-1], done[-1] + 1), (attempt, value, done[-3:])
        assert value >= last_round
        last_round = value
    assert last_round >= 1


def test_one_writer_at_a_time(tmp_path):
    with index_writer(tmp_path / "idx"):
        with pytest.raises(IndexStoreError, match="being written by another process"):
            with index_writer(tmp_path / "idx"):
                pass


def test_exact_search_matches_brute_force():
    emb = _vectors(3000, 48)
    backend = build_backend("exact", {}, emb)
    queries = _vectors(7, 48, seed=5)
    scores, ids = backend.search(queries, 10)
    brute = queries @ emb.T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5, atol=1e-6)
    assert backend.search(queries[0], 5000)[1].shape == (1, 3000)     # k clipped to the gallery


@pytest.mark.parametrize("name", ["hnsw", "ivfpq"])
def test_approximate_search_recall_exact_scores_and_add(tmp_path, name):
    emb = _vectors(2000, 32)
    params = resolve_params(name, None, len(emb), 32)
    backend = build_backend(name, params, emb)
    exact = build_backend("exact", {}, emb)
    queries = emb[::47] + 0.05 * _vectors(len(emb[::47]), 32, seed=9)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, ids = backend.search(queries, 10)
    _, truth = exact.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
    assert recall >= 0.9, recall
    # Returned scores are exact cosines (re-ranked against the float32 embeddings), best first.
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", emb[ids], queries), rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    # Stored and loaded again: same answers.
    (tmp_path / "ann.faiss").write_bytes(backend.serialize())
    again = load_backend(name, params, emb, tmp_path / "ann.faiss")
    np.testing.assert_array_equal(again.search(queries, 10)[1], ids)
    # Adding appends to the trained structure: the new vectors are found, nothing is retrained.
    more = np.concatenate([emb, _vectors(100, 32, seed=3)])
    grown = again.extended(more)
    assert grown.ann.ntotal == 2100 and grown.ann is again.ann
    assert (grown.search(more[2000:2010], 1)[1][:, 0] == np.arange(2000, 2010)).all()


def test_backend_parameters_are_checked():
    assert resolve_params("hnsw", {"ef_search": "128"}, 10, 8)["ef_search"] == 128
    ivf = resolve_params("ivfpq", None, 100_000, 192)
    assert ivf["m"] == 48 and 192 % ivf["m"] == 0 and ivf["nlist"] == 1024
    with pytest.raises(ConfigError, match="no parameter 'efsearch'"):
        resolve_params("hnsw", {"efsearch": 5}, 10, 8)
    with pytest.raises(ConfigError, match="at least 256 items"):
        resolve_params("ivfpq", None, 100, 8)
    with pytest.raises(ConfigError, match="must divide"):
        resolve_params("ivfpq", {"m": 7}, 1000, 64)
    with pytest.raises(ConfigError, match="M=0 is out of range: allowed 2 to 512"):
        resolve_params("hnsw", {"M": 0}, 10, 8)
    with pytest.raises(ConfigError, match="unknown index backend"):
        resolve_params("annoy", None, 10, 8)


def test_per_track_search_returns_one_hit_per_track(tmp_path):
    rng = np.random.default_rng(0)
    base = _vectors(3, 16)
    emb, items = [], []
    for i in range(12):   # 3 tracks of 4 crops, each crop near its track's vector
        track = i % 3
        v = base[track] + 0.05 * rng.standard_normal(16)
        emb.append(v / np.linalg.norm(v))
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        items.append(Item(f"crops/{sha[:2]}/{sha}.jpg", sha, 8, 16,
                          video=VideoRef(source=0, frame=10 * (i // 3), time=i // 3 * 2.0, box=(0, 0, 8, 16),
                                         track=track)))
    manifest = _manifest([])
    manifest["sources"] = [{"kind": "video", "path": "/videos/cam.avi", "name": "cam.avi"}]
    with index_writer(tmp_path / "idx") as writer:
        writer.commit(manifest, np.array(emb, np.float32), items)
    gallery = Gallery.open(tmp_path / "idx")
    hits = gallery.search(base[1], 3, per_track=True)
    assert [h.track.track for h in hits][0] == 1 and len({h.track.track for h in hits}) == 3
    assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    info = gallery.describe(hits[0].id, hits[0].track)
    assert info["video"] == "cam.avi" and (info["track_start"], info["track_end"], info["track_items"]) == (0.0, 6.0, 4)
    assert len(gallery.search(base[1], 5)) == 5 and len(gallery.search(base[1], 5, per_track=True)) == 3


def test_items_are_confined_to_their_root(small_index, tmp_path):
    for bad in ("../x.jpg", "/etc/passwd", "a\\..\\b", "~/x", "a/../../b", ""):
        with pytest.raises(ValueError, match="relative"):
            parse_item(json.dumps({"path": bad, "sha256": FP, "width": 1, "height": 1, "root": 0}), "t", 1, 0)
    index_dir, _, items = small_index
    gallery = Gallery.open(index_dir)
    assert gallery.read_image(3) == b"image 3"
    # A file changed after indexing is not served; nor is a symlink leading out of the root.
    (tmp_path / "imgs" / "004.jpg").write_bytes(b"something else")
    with pytest.raises(IndexStoreError, match="changed since it was indexed"):
        gallery.read_image(4)
    (tmp_path / "imgs" / "005.jpg").unlink()
    (tmp_path / "imgs" / "005.jpg").symlink_to(tmp_path / "idx" / "CURRENT")
    with pytest.raises(IndexStoreError, match="outside its root"):
        gallery.read_image(5)
    with pytest.raises(IndexStoreError, match="no item"):
        gallery.read_image(20)


@pytest.mark.parametrize("name, params", [("hnsw", {}), ("ivfpq", {"nprobe": 1})])
def test_approximate_search_fills_k_when_faiss_finds_fewer_candidates(name, params):
    # faiss pads with id -1 when its graph or its probed lists hold fewer than the candidates asked.
    emb = _vectors(300, 16)
    backend = build_backend(name, resolve_params(name, params, len(emb), 16), emb)
    exact = build_backend("exact", {}, emb)
    queries = emb[:4]
    for k in (60, 299, 300, 1000):
        scores, ids = backend.search(queries, k)
        assert ids.shape == (4, min(k, 300)) and (ids >= 0).all() and np.isfinite(scores).all()
        assert all(len(set(row)) == len(row) for row in ids.tolist())
        np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", emb[ids], queries), rtol=1e-5, atol=1e-6)
    everything = np.sort(backend.search(queries, 300)[1], 1)
    np.testing.assert_array_equal(everything, np.sort(exact.search(queries, 300)[1], 1))


def test_a_small_hnsw_gallery_answers_every_search_with_real_items(tmp_path):
    from ivt.index.filters import SearchFilter
    from ivt.index.query import example_item, results
    from ivt.index.same_person import SamePersonSettings

    items = _gallery_files(tmp_path / "imgs", 300)
    emb = _vectors(300, 16)
    params = resolve_params("hnsw", None, 300, 16)
    with index_writer(tmp_path / "idx") as writer:
        writer.commit(_manifest([str(tmp_path / "imgs")], "hnsw", params), emb, items,
                      build_backend("hnsw", params, emb).serialize())
    gallery = Gallery.open(tmp_path / "idx")
    for where in (None, SearchFilter.make(None, None, None, None, -1.0)):
        hits = gallery.search(emb[0], 300, where=where)
        assert sorted(h.id for h in hits) == list(range(300))
        assert len(gallery.search(emb[0], 300, per_track=True, where=where)) == 300
    example = example_item(gallery, "7")        # find this person: a pool of 400 asked of 300 items
    ranked = results(gallery, example.vector, 10, example=example, same_person=SamePersonSettings())
    assert len(ranked) == 10 and 7 not in [r["id"] for r in ranked] and all(r["id"] >= 0 for r in ranked)


@pytest.mark.parametrize("name, given, items, message", [
    ("hnsw", {"M": "99999999999999"}, 1000, "M=99999999999999 is out of range: allowed 2 to 512"),
    ("hnsw", {"M": 1}, 1000, "M=1 is out of range: allowed 2 to 512"),
    ("hnsw", {"ef_construction": 10**11}, 1000, "ef_construction=100000000000 is out of range: allowed 1 to 65536"),
    ("hnsw", {"ef_search": 99999999999}, 1000, "ef_search=99999999999 is out of range: allowed 1 to 65536"),
    ("hnsw", {"rerank": 5000}, 1000, "rerank=5000 is out of range: allowed 1 to 1000"),
    ("ivfpq", {"nbits": 16}, 1568, "nbits=16 is out of range: allowed 1 to 10 (2**nbits centroids per sub-quantiser "
                                   "need as many items to train on; this gallery has 1568)"),
    ("ivfpq", {"nbits": 17}, 1 << 20, "nbits=17 is out of range: allowed 1 to 16"),
    ("ivfpq", {"nlist": 1569}, 1568, "nlist=1569 is out of range: allowed 1 to 1568 (each inverted list needs "
                                     "an item to train on; this gallery has 1568)"),
    ("ivfpq", {"nlist": 64, "nprobe": 65}, 1568, "nprobe=65 is out of range: allowed 1 to 64 (nlist)"),
    ("ivfpq", {"m": 64}, 1568, "m=64 must divide the embedding size 32"),
    ("ivfpq", {"nprobe": 10**12}, 1568, "nprobe=1000000000000 is out of range"),
])
def test_backend_parameters_out_of_range_name_the_allowed_range(name, given, items, message):
    with pytest.raises(ConfigError, match=f"backend {name}: " + re.escape(message)):
        resolve_params(name, given, items, 32)


def test_search_parameter_overrides_are_checked_against_the_index(tmp_path):
    emb = _vectors(300, 16)
    items = _gallery_files(tmp_path / "imgs", 300)
    params = resolve_params("ivfpq", {"nlist": 8}, 300, 16)
    with index_writer(tmp_path / "idx") as writer:
        writer.commit(_manifest([str(tmp_path / "imgs")], "ivfpq", params), emb, items,
                      build_backend("ivfpq", params, emb).serialize())
    assert Gallery.open(tmp_path / "idx", {"nprobe": 8}).backend.params["nprobe"] == 8
    for given, message in (({"nprobe": 9}, "nprobe=9 is out of range: allowed 1 to 8 (nlist)"),
                           ({"nprobe": 0}, "nprobe=0 is out of range: allowed 1 to 8"),
                           ({"rerank": 10**11}, "rerank=100000000000 is out of range: allowed 1 to 1000"),
                           ({"ef_search": 5}, "backend ivfpq has no search parameter 'ef_search'")):
        with pytest.raises(IvtError, match=re.escape(message)):
            Gallery.open(tmp_path / "idx", given)
