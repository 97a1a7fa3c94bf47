"""Find this person: image queries (an index item or a file) in the CLI and the API, the example
left out of its own results, image-to-image metrics and loss, and the frame around a video crop."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import ivt
from ivt.cli import main
from ivt.errors import IndexStoreError
from ivt.evaluate.metrics import ranking_metrics
from ivt.index.build import add_to_index, build_index
from ivt.index.frames import read_frame
from ivt.index.gallery import Gallery
from ivt.index.ingest import image_source
from ivt.index.same_person import SamePersonSettings, same_person_order
from ivt.losses import image_image_loss
from ivt.serve import create_app, load_service
from ivt.video import read_frames
from search_helpers import ColourDetector, tiny_trained_run, write_clip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    run, data = tiny_trained_run(tmp_path_factory.getbasetemp())
    model = ivt.load(run, device="cpu")
    base = tmp_path_factory.mktemp("find")
    clip = base / "walk.avi"
    truth = write_clip(clip, frames=6)
    index_dir = base / "idx"
    build_index(index_dir, model, images=image_source(data, split="test"), progress=False)
    add_to_index(index_dir, model, videos=[clip], every=1, detector=ColourDetector(), progress=False)
    return {"run": run, "data": data, "model": model, "index": index_dir, "clip": clip, "truth": truth}


@pytest.fixture(scope="module")
def client(setup):
    return TestClient(create_app(service=load_service(setup["index"], device="cpu")))


def _ranked_ids(gallery: Gallery, query: np.ndarray) -> list[int]:
    return np.argsort(-(gallery.stored.embeddings @ query), kind="stable").tolist()


def test_search_by_item_ranks_by_its_embedding_and_leaves_it_out(setup, capsys):
    gallery = Gallery.open(setup["index"])
    item = 2
    args = ["search", "--index", str(setup["index"]), "--top-k", "5", "--json", "--cosine"]
    assert main([*args, "--item", str(item)]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = [h["id"] for h in out["results"]]
    expected = [i for i in _ranked_ids(gallery, gallery.stored.embeddings[item]) if i != item][:5]
    assert ids == expected and out["like"] == "item 2" and out["text"] is None
    # The same image given as a file: encoded afresh, and recognised as that item by its bytes.
    crop = setup["index"].parent / "query.jpg"
    crop.write_bytes(gallery.read_image(item))
    assert main([*args, "--image", str(crop)]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in by_file["results"]] == expected and by_file["like"] == "query.jpg"
    assert main(["search", "--index", str(setup["index"]), "--image", str(crop), "--top-k", "3"]) == 0
    assert capsys.readouterr().out.startswith("query: like query.jpg  (20 indexed images")


def test_an_example_alone_is_ranked_camera_centred_and_k_reciprocally(setup, capsys):
    """By default an example image ranks the index as ivt.index.same_person says: every embedding
    minus its camera's mean (plain images one group, the clip's crops another), then the best 50
    re-ranked k-reciprocally; scores stay the stored cosines."""
    gallery = Gallery.open(setup["index"])
    item = 2
    assert main(["search", "--index", str(setup["index"]), "--item", str(item), "--top-k", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    x = gallery.stored.embeddings
    cameras = np.array(["walk" if it.video is not None else "" for it in gallery.items])
    means = {c: x[cameras == c].mean(0) for c in ("", "walk")}
    z = x - np.stack([means[c] for c in cameras])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    others = np.array([i for i in range(len(x)) if i != item])
    order, _ = same_person_order(z[item], z[others], SamePersonSettings())
    expected = others[order][:12].tolist()
    assert [h["id"] for h in out["results"]] == expected
    assert expected != [i for i in _ranked_ids(gallery, x[item]) if i != item][:12]      # it is not the cosine
    for hit in out["results"]:
        np.testing.assert_allclose(hit["score"], float(x[hit["id"]] @ x[item]), atol=1e-5)


def test_the_api_ranks_an_example_as_the_cli_does_and_a_new_photo_on_the_overall_mean(setup, client, capsys):
    gallery = Gallery.open(setup["index"])
    assert main(["search", "--index", str(setup["index"]), "--item", "2", "--top-k", "12", "--json"]) == 0
    cli = [h["id"] for h in json.loads(capsys.readouterr().out)["results"]]
    body = client.post("/api/search", json={"like": 2, "k": 12}).json()
    assert [h["id"] for h in body["results"]] == cli and body["ranking"] == "same person"
    plain = client.post("/api/search", json={"like": 2, "k": 12, "cosine": True}).json()
    x = gallery.stored.embeddings
    assert plain["ranking"] == "cosine" and [h["id"] for h in plain["results"]] == [
        i for i in _ranked_ids(gallery, x[2]) if i != 2][:12]
    assert client.post("/api/search", json={"like": 2, "text": "a red shirt"}).json()["ranking"] == "cosine"
    # A photo the index does not hold (camera unknown): centred on the mean of every item.
    photo = setup["index"].parent / "mirrored.png"
    Image.open(io.BytesIO(gallery.read_image(5))).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo)
    assert main(["search", "--index", str(setup["index"]), "--image", str(photo), "--top-k", "20", "--json"]) == 0
    got = [h["id"] for h in json.loads(capsys.readouterr().out)["results"]]
    means = gallery.camera_means()
    query = means.centred(setup["model"].encode_images([Image.open(photo).convert("RGB")]).numpy(), [None])[0]
    cameras = ["walk" if it.video is not None else "" for it in gallery.items]
    order, _ = same_person_order(query, means.centred(x, cameras), SamePersonSettings())
    assert got == order.tolist() and len(got) == 20 and 5 in got


def test_a_description_and_an_example_together(setup, capsys):
    gallery, model = Gallery.open(setup["index"]), setup["model"]
    text = "a person in a red shirt"
    assert main(["search", "--index", str(setup["index"]), text, "--item", "0", "--top-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    both = model.encode_texts([text])[0].numpy() + gallery.stored.embeddings[0]
    both /= np.linalg.norm(both)
    assert [h["id"] for h in out["results"]] == [i for i in _ranked_ids(gallery, both) if i != 0][:4]
    np.testing.assert_allclose(out["results"][0]["score"], float(gallery.stored.embeddings[out["results"][0]["id"]]
                                                                 @ both), atol=1e-5)


def test_per_track_leaves_out_the_whole_track_of_the_example(setup, client):
    gallery = Gallery.open(setup["index"])
    crop = next(i for i, item in enumerate(gallery.items) if item.video is not None)
    own = gallery.track_of(crop).track
    body = client.post("/api/search", json={"like": crop, "k": 100, "per_track": True}).json()
    tracks = [h["provenance"]["track"] for h in body["results"] if "track" in h["provenance"]]
    assert own not in tracks and len(tracks) == 1 and len(body["results"]) == 8 + 1
    assert body["like"] == crop and body["query"] == f"like item {crop}"
    flat = client.post("/api/search", json={"like": crop, "k": 100}).json()["results"]
    assert crop not in [h["id"] for h in flat] and len(flat) == 19        # its own track's other crops stay


@pytest.mark.parametrize("args, message", [
    ([], "give a description, --image FILE or --item ID"),
    (["--item", "1", "--image", "x.jpg"], "give one"),
    (["--item", "99"], "no such item"),
    (["--item", "-1"], "no such item"),
    (["--item", "1e1"], "no such item"),
    (["--image", "."], "not a file"),
    (["--image", "missing.jpg"], "not a file"),
    (["--item", "1", "--rerank", "4"], "--rerank"),
    (["--cosine", "a red shirt"], "--cosine is for an example image alone"),
    (["--cosine", "a red shirt", "--item", "1"], "--cosine is for an example image alone"),
])
def test_image_query_mistakes_exit_2(setup, capsys, args, message):
    assert main(["search", "--index", str(setup["index"]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unreadable_image_query_is_a_clear_error(setup, capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["search", "--index", str(setup["index"]), "--image", str(bad)]) == 2
    assert "not a readable image" in capsys.readouterr().err


@pytest.mark.parametrize("body, status, message", [
    ({"k": 3}, 422, "give a text, a like"),
    ({"like": 99}, 404, "no image with id"),
    ({"like": "../0"}, 404, "no image with id"),
    ({"like": 1, "rerank": 4}, 422, "rerank"),
    ({"text": "a red shirt", "cosine": True}, 422, "cosine is for a like"),
    ({"like": 1, "text": "a red shirt", "cosine": True}, 422, "cosine is for a like"),
    ({"like": 1, "cosine": 1}, 422, "cosine"),
])
def test_bad_like_requests(client, body, status, message):
    r = client.post("/api/search", json=body)
    assert r.status_code == status and message in r.json()["error"]


def test_the_frame_of_a_crop_with_its_box_drawn(setup, client):
    gallery = Gallery.open(setup["index"])
    for item_id, item in enumerate(gallery.items):
        if item.video is None:
            assert client.get(f"/api/frames/{item_id}").status_code == 404
            continue
        r = client.get(f"/api/frames/{item_id}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        frame = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
        assert frame.shape == (120, 160, 3)
        x, y, w, h = item.video.box
        # The outline (2 px, just outside the box) is red; the figure inside is the video's own pixels.
        for px, py in ((x - 1, y + h // 2), (x + w, y + h // 2), (x + w // 2, y - 1), (x + w // 2, y + h)):
            red, green, blue = frame[py, px]
            assert red > 180 and red - max(green, blue) > 80, (item_id, px, py, frame[py, px])
        source = read_frames(setup["clip"], 1)
        original = next(f.image for f in source if f.index == item.video.frame).astype(int)
        inside = np.abs(frame[y + 2:y + h - 2, x + 2:x + w - 2] - original[y + 2:y + h - 2, x + 2:x + w - 2])
        assert inside.mean() < 8
    assert client.get("/api/frames/../../etc/passwd").status_code == 404


def test_the_track_strip_is_in_time_order(setup, client):
    gallery = Gallery.open(setup["index"])
    crop = next(i for i, item in enumerate(gallery.items) if item.video is not None)
    body = client.get(f"/api/tracks/{crop}").json()
    frames = [i["frame"] for i in body["items"]]
    assert body["count"] == 6 and frames == sorted(frames) == list(range(6))
    assert crop in [i["id"] for i in body["items"]]
    assert all(i["frame_url"] == f"/api/frames/{i['id']}" for i in body["items"])
    short = client.get(f"/api/tracks/{crop}", params={"limit": 3}).json()
    assert [i["frame"] for i in short["items"]] == [0, 2, 5] and short["count"] == 6
    photo = next(i for i, item in enumerate(gallery.items) if item.video is None)
    assert client.get(f"/api/tracks/{photo}").json()["items"] == []
    assert client.get(f"/api/tracks/{crop}", params={"limit": 0}).status_code == 422


def test_a_changed_video_gives_410_not_another_frame(setup, tmp_path):
    clip = tmp_path / "walk.avi"
    shutil.copy(setup["clip"], clip)
    build_index(tmp_path / "idx", setup["model"], videos=[clip], every=1, detector=ColourDetector(), progress=False)
    client = TestClient(create_app(tmp_path / "idx", device="cpu"))
    assert client.get("/api/frames/0").status_code == 200
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF
    clip.write_bytes(bytes(data))
    r = client.get("/api/frames/1")
    assert r.status_code == 410 and "changed or gone" in r.json()["error"] and str(tmp_path) not in r.text
    clip.unlink()
    assert client.get("/api/frames/2").status_code == 410


def test_read_frame_is_exactly_that_frame(setup):
    frames = {f.index: f.image for f in read_frames(setup["clip"], 1)}
    for index in (0, 3, 5):
        np.testing.assert_array_equal(read_frame(setup["clip"], index), frames[index])
    with pytest.raises(IndexStoreError, match="no frame 6"):
        read_frame(setup["clip"], 6)


def test_image_to_image_metrics_leave_the_query_out():
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=1)
    pids = torch.arange(30) // 3
    m = ranking_metrics(x @ x.T, pids, pids, exclude_self=True)
    hits, aps = 0, []
    for i in range(30):
        others = [j for j in range(30) if j != i]
        order = np.argsort(-(x[i] @ x[others].T).numpy(), kind="stable")
        relevant = (pids[others] == pids[i]).numpy()[order]
        hits += int(relevant[0])
        found = np.cumsum(relevant)
        aps.append(np.mean([found[r] / (r + 1) for r in np.flatnonzero(relevant)]))
    assert m["R1"] == pytest.approx(100 * hits / 30) and m["mAP"] == pytest.approx(100 * np.mean(aps))
    assert m["num_gallery"] == 29
    plain = ranking_metrics(x @ x.T, pids, pids)
    assert plain["R1"] == 100.0                    # without leaving it out, every image finds itself
    with pytest.raises(ValueError, match="exclude_self"):
        ranking_metrics(x[:5] @ x.T, pids[:5], pids, exclude_self=True)


def test_image_image_loss_pulls_photos_of_one_person_together():
    labels = torch.tensor([0, 0, 1, 1, 2])            # identity 2 has one image: not an anchor
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    loss = image_image_loss(emb, labels, 10.0)
    x = torch.nn.functional.normalize(emb, dim=1)
    sims = 10.0 * x @ x.T
    expected = []
    for i in range(4):
        others = [j for j in range(5) if j != i]
        log_p = torch.log_softmax(sims[i, others], dim=0)
        expected.append(-log_p[others.index(i ^ 1)])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    together = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.05, 1.0], [0.6, 0.8]])
    assert image_image_loss(together, labels, 10.0) < 0.5 * loss
    lonely = image_image_loss(emb[:3].clone().requires_grad_(True), torch.tensor([0, 1, 2]), 10.0)
    assert lonely.item() == 0.0
    lonely.backward()                                   # still a graph: nothing to learn, no error
