"""Item ids as people type them back: the results table shows the first 12 hex digits of a Milvus
item's id (its content's sha256), and any unique prefix of at least 4 digits, in either case,
names the item (as git takes object names) in ``search --item``, the API's ``like`` and its URLs."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import ivt
from ivt.cli import main
from ivt.errors import DataError
from ivt.index import gallery as gallery_module
from ivt.index.build import build_index
from ivt.index.ingest import image_source
from ivt.index.milvus_gallery import MilvusGallery
from ivt.index.query import example_item
from ivt.serve.app import create_app, load_service
from search_helpers import tiny_trained_run


@pytest.fixture(scope="module")
def milvus_lite(tmp_path_factory):
    """A milvus-lite index of the 8 test images of the tiny toy gallery, and their ids, sorted."""
    run, data = tiny_trained_run(tmp_path_factory.getbasetemp())
    model = ivt.load(run, device="cpu")
    location = f"milvus:{tmp_path_factory.mktemp('ids') / 'people.db'}#people"
    build_index(location, model, images=image_source(data, split="test"), progress=False)
    gallery = MilvusGallery.open(location)
    ids = sorted(hit.id for hit in gallery.search(model.encode_texts(["a person"])[0].numpy(), 8))
    assert len(ids) == 8
    return location, gallery, ids


def test_a_unique_prefix_in_either_case_names_the_item(milvus_lite, capsys):
    location, gallery, ids = milvus_lite
    sha = ids[0]
    for raw in (sha, sha.upper(), sha[:12], sha[:12].upper(), sha[:4]):
        assert gallery.parse_id(raw) == sha and example_item(gallery, raw).item == sha
    absent = next(p for p in ("0" * 12, "f" * 12) if not any(i.startswith(p) for i in ids))
    for raw in ("", sha[:3], sha[:12] + "x", absent, sha + "0", " " + sha[:12]):
        assert gallery.parse_id(raw) is None
    client = TestClient(create_app(service=load_service(location, device="cpu")))
    assert client.get(f"/api/images/{sha[:12].upper()}").content == gallery.read_image(sha)
    assert client.post("/api/search", json={"like": sha[:12], "k": 3}).json()["like"] == sha
    assert main(["search", "--index", location, "--item", sha[:12].upper(), "--top-k", "3", "--json",
                 "--device", "cpu"]) == 0
    assert f'"like": "item {sha[:12]}"' in capsys.readouterr().out


def test_a_prefix_of_several_ids_is_called_ambiguous(milvus_lite, monkeypatch, capsys):
    location, gallery, ids = milvus_lite
    # No two of 8 ids share 4 digits: allow 1-digit prefixes to get one that several ids begin with.
    monkeypatch.setattr(gallery_module, "MIN_ID_PREFIX", 1)
    shared = next((a[0] for a, b in zip(ids, ids[1:]) if a[0] == b[0]), None)
    if shared is None:
        pytest.skip("no two of the 8 ids begin with the same digit")
    message = (f"item id '{shared}' is ambiguous: the ids of several items begin with it "
               rf"\({shared}[0-9a-f]{{11}}, {shared}[0-9a-f]{{11}}, \.\.\.\); give more of its digits")
    with pytest.raises(DataError, match=message):
        gallery.parse_id(shared.upper())
    client = TestClient(create_app(service=load_service(location, device="cpu")))
    r = client.post("/api/search", json={"like": shared, "k": 3})
    assert r.status_code == 422 and r.json()["error"].startswith(f"like: item id '{shared}' is ambiguous")
    assert client.get(f"/api/images/{shared}").status_code == 422
    assert main(["search", "--index", location, "--item", shared, "--device", "cpu"]) == 2
    assert f"item id '{shared}' is ambiguous" in capsys.readouterr().err
