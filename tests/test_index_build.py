"""Building and extending indexes with a real (tiny, trained) model, and `ivt index` / `ivt search`."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

import ivt
from ivt.cli import main
from ivt.errors import DataError, IndexStoreError
from ivt.index.build import add_to_index, build_index
from ivt.index.gallery import Gallery
from ivt.index.ingest import image_source
from ivt.index.query import open_for_search
from ivt.index.store import read_index
from search_helpers import tiny_trained_run, write_clip


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def model(run_and_data):
    return ivt.load(run_and_data[0], device="cpu", precision="fp32")  # fp32 explicitly: the manifest records it


def _snapshot(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_build_from_a_folder_skips_unreadable_files(model, run_and_data, tmp_path):
    _, data = run_and_data
    folder = tmp_path / "gallery"
    shutil.copytree(data / "imgs" / "test", folder / "test")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    source = image_source(folder)
    assert len(source.files) == 10 and source.files[0][1] is None
    report = build_index(tmp_path / "idx", model, images=source, progress=False)
    assert report.added == 8 and report.total == 8 and report.version == "v000001"
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in report.unreadable) == ["broken.jpg", "empty.png"]
    assert "2 unreadable file(s) skipped" in report.summary() and "broken.jpg" in report.summary()
    stored = read_index(tmp_path / "idx")
    files = [folder / i.path for i in stored.items]
    np.testing.assert_allclose(stored.embeddings, model.encode_images(files).numpy(), atol=1e-5)
    for item, path in zip(stored.items, files):
        assert item.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and (item.width, item.height) == (16, 32)
    manifest = stored.manifest
    assert manifest["model"]["fingerprint"] == model.fingerprint
    assert manifest["tokenizer"]["fingerprint"] == model.tokenizer_fingerprint
    assert manifest["model"]["precision"] == "fp32" and manifest["backend"] == {"name": "exact", "params": {}}
    # Every image finds itself first.
    gallery = Gallery.open(tmp_path / "idx")
    for i in range(8):
        hit = gallery.search(stored.embeddings[i], 1)[0]
        assert hit.id == i and hit.score == pytest.approx(1.0, abs=1e-5)



def test_a_build_that_finds_no_one_says_so_not_that_files_were_unreadable(model, tmp_path):
    """Videos in which the detector finds nobody leave nothing to index: the error says that, with the
    videos and the frames searched, rather than '0 unreadable file(s)'; nothing is written."""
    class NoOne:
        name = "no-one"

        def __call__(self, frame):
            return []

    write_clip(tmp_path / "empty street.avi", frames=4)
    with pytest.raises(DataError) as raised:
        build_index(tmp_path / "idx", model, videos=[tmp_path / "empty street.avi"], detector=NoOne(),
                    progress=False)
    assert str(raised.value) == ("nothing could be indexed: no person was found in 1 video(s) "
                                 "(empty street.avi; 4 frame(s) searched)")
    assert not (tmp_path / "idx").exists()

def test_add_encodes_only_new_content_and_repeats_are_no_ops(model, run_and_data, tmp_path, monkeypatch):
    _, data = run_and_data
    build_index(tmp_path / "idx", model, images=image_source(data, split="test"), progress=False)
    first = read_index(tmp_path / "idx")
    assert {i.pid for i in first.items} == {20, 21, 22, 23}
    encoded = []
    real = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda batch, **kw: encoded.append(len(batch)) or real(batch, **kw))
    report = add_to_index(tmp_path / "idx", model, images=image_source(data, split="val"), progress=False)
    assert report.added == 6 and report.total == 14 and sum(encoded) == 6
    second = read_index(tmp_path / "idx")
    np.testing.assert_array_equal(second.embeddings[:8], first.embeddings)
    assert second.items[:8] == first.items and len(second.manifest["roots"]) == 1
    before = _snapshot(tmp_path / "idx")
    again = add_to_index(tmp_path / "idx", model, images=image_source(data, split="val"), progress=False)
    assert again.added == 0 and again.already_indexed == 6 and again.version is None
    assert "index unchanged" in again.summary()
    assert _snapshot(tmp_path / "idx") == before
    with pytest.raises(IndexStoreError, match="already holds an index"):
        build_index(tmp_path / "idx", model, images=image_source(data, split="val"), progress=False)
    replaced = build_index(tmp_path / "idx", model, images=image_source(data, split="val"), force=True,
                           progress=False)
    assert replaced.total == 6 and len(read_index(tmp_path / "idx")) == 6


def test_a_different_model_or_tokenizer_is_refused(model, run_and_data, tmp_path):
    from ivt.checkpoint import load_model, save_checkpoint
    from ivt.text.tokenizer import Tokenizer

    run, data = run_and_data
    build_index(tmp_path / "idx", model, images=image_source(data, split="test"), progress=False)
    before = _snapshot(tmp_path / "idx")
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    encoder, meta = load_model(run, "best")
    with torch.no_grad():
        encoder.norm.bias.add_(0.01)       # the same architecture, other weights
    save_checkpoint(other, "best", encoder, {k: v for k, v in meta.items() if k != "weights_sha256"})
    changed = ivt.load(other, device="cpu")
    with pytest.raises(IndexStoreError, match=r"built with model .* but checkpoint .* is model"):
        add_to_index(tmp_path / "idx", changed, images=image_source(data, split="val"), progress=False)
    with pytest.raises(IndexStoreError, match="not comparable"):
        open_for_search(tmp_path / "idx", checkpoint=other, device="cpu")
    retok = tmp_path / "retok-run"
    shutil.copytree(run, retok)
    captions = ["a completely different vocabulary of words"] * 3
    Tokenizer.train(captions, vocab_size=200, min_frequency=1, max_length=24).save(retok / "tokenizer.json")
    with pytest.raises(IndexStoreError, match="tokenizer"):
        open_for_search(tmp_path / "idx", checkpoint=retok, device="cpu")
    assert _snapshot(tmp_path / "idx") == before


def test_cli_build_search_json_and_html(model, run_and_data, tmp_path, capsys, monkeypatch):
    run, data = run_and_data
    monkeypatch.setenv("IVT_CPU_PRECISION", "fp32")  # the scores are compared with the fp32 fixture model's
    idx = tmp_path / "idx"
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(data), "--split", "test",
                 "--out", str(idx), "--quiet"]) == 0
    assert "8 new item(s), 8 in total" in capsys.readouterr().out
    caption = json.loads((data / "reid_raw.json").read_text())[-1]["captions"][0]    # a test person (id 23)
    assert main(["search", "--index", str(idx), caption, "--top-k", "3", "--json", "--html",
                 str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)
    hits = result["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and result["count"] == 8
    # The ranking is the exact cosine ranking of the model, and the described person is in it.
    stored = read_index(idx)
    scores = stored.embeddings @ model.encode_texts([caption])[0].numpy()
    assert [h["id"] for h in hits] == np.argsort(-scores, kind="stable")[:3].tolist()
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(scores)[::-1][:3], atol=1e-5)
    assert 23 in [h["provenance"]["pid"] for h in hits]
    page = (tmp_path / "r.html").read_text()
    assert page.count("<img src='data:image/jpeg;base64,") == 3 and "http" not in page.replace("http-equiv", "")
    assert main(["search", "--index", str(idx), caption, "--top-k", "2"]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and len(table.splitlines()) == 4 and "(id " in table.splitlines()[2]


def test_cli_video_index_per_track_and_re_adding(run_and_data, tmp_path, capsys):
    run, _ = run_and_data
    clip = tmp_path / "walk.avi"
    write_clip(clip, frames=12)
    idx = tmp_path / "idx"
    assert main(["index", "build", "--checkpoint", str(run), "--video", str(clip), "--every", "2",
                 "--detector", "search_helpers:make_colour_detector", "--out", str(idx), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "12 people crops in 2 tracks" in out and "6 frames read" in out
    gallery = Gallery.open(idx)
    assert len(gallery) == 12 and len(gallery.tracks) == 2
    assert gallery.manifest["sources"][0]["detector"] == "colour-stub"
    assert main(["search", "--index", str(idx), "a person in a red shirt", "--per-track", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 2 and {h["provenance"]["track"] for h in hits} == {0, 1}
    for h in hits:
        p = h["provenance"]
        assert p["video"] == "walk.avi" and (p["track_start"], p["track_end"], p["track_items"]) == (0.0, 2.0, 6)
        assert p["frame"] % 2 == 0 and len(p["box"]) == 4
    assert main(["index", "add", "--index", str(idx), "--video", str(clip), "--every", "2",
                 "--detector", "search_helpers:make_colour_detector", "--quiet"]) == 0
    assert "already in the index, skipped" in capsys.readouterr().out and len(read_index(idx)) == 12


def test_hnsw_index_gives_the_exact_ranking_on_a_small_gallery(model, run_and_data, tmp_path):
    _, data = run_and_data
    build_index(tmp_path / "exact", model, images=image_source(data), progress=False)
    build_index(tmp_path / "hnsw", model, images=image_source(data), backend="hnsw",
                backend_params={"M": 8}, progress=False)
    exact, hnsw = Gallery.open(tmp_path / "exact"), Gallery.open(tmp_path / "hnsw")
    assert hnsw.manifest["backend"]["params"]["M"] == 8 and (tmp_path / "hnsw" / "v000001" / "ann.faiss").exists()
    query = model.encode_texts(["a person in a green shirt, with white trousers."])[0].numpy()
    assert [h.id for h in hnsw.search(query, 10)] == [h.id for h in exact.search(query, 10)]


def test_cli_errors_exit_2_with_one_message(run_and_data, tmp_path, capsys):
    run, data = run_and_data
    assert main(["search", "--index", str(tmp_path), "a man"]) == 2
    assert "not an ivt index" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(data), "--out",
                 str(tmp_path / "busy")]) == 2
    assert "is not an ivt index; choose an empty or new --out" in capsys.readouterr().err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(data), "--out", str(tmp_path / "x"),
                 "--backend", "hnsw", "--param", "efsearch=5"]) == 2
    assert "no parameter 'efsearch'" in capsys.readouterr().err
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(data), "--out", str(tmp_path / "x"),
                 "--backend", "hnsw", "--param", "M=99999999999999"]) == 2
    assert "backend hnsw: M=99999999999999 is out of range: allowed 2 to 512" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    idx = tmp_path / "idx"
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(data), "--split", "val",
                 "--out", str(idx), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "   "]) == 2
    assert "1 to 500 characters" in capsys.readouterr().err
    emb = idx / "v000001" / "embeddings.npy"
    data_bytes = bytearray(emb.read_bytes())
    data_bytes[-1] ^= 0xFF
    emb.write_bytes(bytes(data_bytes))
    before = _snapshot(idx)
    assert main(["search", "--index", str(idx), "a man"]) == 2
    assert "sha256" in capsys.readouterr().err
    assert main(["index", "add", "--index", str(idx), "--images", str(data), "--split", "test"]) == 2
    assert _snapshot(idx) == before


def test_demo_ends_with_an_index_and_two_searches(run_and_data, tmp_path, capsys):
    from ivt.demo import DEMO_QUERIES, search_demo

    run, data = run_and_data
    demo_run = tmp_path / "run"
    shutil.copytree(run, demo_run)
    pages = search_demo(demo_run, data, top_k=4)
    out = capsys.readouterr().out
    assert len(pages) == 2 and all(p.read_text().count("data:image/jpeg;base64,") == 4 for p in pages)
    for text in DEMO_QUERIES:
        assert f'query: "{text}"  (8 indexed images, exact search' in out
    assert out.count("(id 2") == 8 and len(read_index(demo_run / "index")) == 8


def test_a_large_file_that_is_no_image_is_skipped_from_its_header_without_reading_it(model, tmp_path, monkeypatch):
    import os
    import tracemalloc

    from PIL import Image

    import ivt.index.ingest as ingest

    folder = tmp_path / "gallery"
    folder.mkdir()
    Image.new("RGB", (16, 32), (200, 30, 30)).save(folder / "person.jpg")
    with open(folder / "junk.jpg", "wb") as fh:
        fh.truncate(200 << 20)                             # 200 MB of zeros, sparse: no disk used
    hashed = []
    real_hash = ingest.file_sha256
    monkeypatch.setattr(ingest, "file_sha256",
                        lambda file: hashed.append(os.path.basename(getattr(file, "name", file))) or real_hash(file))
    tracemalloc.start()
    try:
        report = build_index(tmp_path / "idx", model, images=image_source(folder), progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.added == 1
    assert report.unreadable == [(str(folder.resolve() / "junk.jpg"), "not an image file (or an unsupported format)")]
    assert set(hashed) == {"person.jpg"} and peak < 20 << 20     # refused from its first bytes: never read whole
