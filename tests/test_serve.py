"""The search service: API answers, 4xx for bad requests, images only by id (no path traversal),
explanations, the page, and 200 concurrent queries against a real uvicorn server."""
from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest
from fastapi.testclient import TestClient

import ivt
from ivt.cli import build_parser
from ivt.errors import IndexStoreError
from ivt.index.build import add_to_index, build_index
from ivt.index.ingest import image_source
from ivt.serve import create_app, load_service
from search_helpers import ColourDetector, running_server, tiny_trained_run, write_clip

QUERY = "a person in a red shirt, with blue trousers."


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    run, data = tiny_trained_run(tmp_path_factory.getbasetemp())
    model = ivt.load(run, device="cpu")
    out = tmp_path_factory.mktemp("serve") / "idx"
    build_index(out, model, images=image_source(data, split="test"), progress=False)
    clip = out.parent / "walk.avi"
    write_clip(clip, frames=6)
    add_to_index(out, model, videos=[clip], every=1, detector=ColourDetector(), progress=False)
    return out


@pytest.fixture(scope="module")
def run_and_data_dir(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory.getbasetemp())[1]


@pytest.fixture(scope="module")
def service(index_dir):
    return load_service(index_dir, device="cpu")


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service=service))


def test_search_returns_ranked_results_with_provenance(client, service):
    r = client.post("/api/search", json={"text": QUERY, "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 8 + 12 and body["k"] == 5 and len(body["results"]) == 5
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    for hit in body["results"]:
        assert hit["image_url"] == f"/api/images/{hit['id']}"
        assert client.get(hit["image_url"]).content == service.gallery.read_image(hit["id"])
        assert "pid" in hit["provenance"] or {"video", "frame", "time", "box", "track"} <= set(hit["provenance"])
    video_hits = client.post("/api/search", json={"text": QUERY, "k": 100, "per_track": True}).json()["results"]
    tracks = [h["provenance"]["track"] for h in video_hits if "video" in h["provenance"]]
    assert sorted(tracks) == [0, 1] and len(video_hits) == 8 + 2
    assert client.get("/healthz").json() == {"status": "ok", "items": 20, "tracks": 2, "backend": "exact",
                                             "model": service.model.fingerprint[:12]}


@pytest.mark.parametrize("body, status, message", [
    ({"text": ""}, 422, "text must be 1 to 500 characters"),
    ({"text": "   "}, 422, "text must be 1 to 500 characters"),
    ({"text": "a" * 501}, 422, "text must be 1 to 500 characters"),
    ({"text": "a man", "k": 0}, 422, "k must be an integer from 1 to 100"),
    ({"text": "a man", "k": 101}, 422, "k must be an integer from 1 to 100"),
    ({"text": "a man", "k": "5"}, 422, "k must be an integer from 1 to 100"),
    ({"text": "a man", "k": 2.5}, 422, "k must be an integer from 1 to 100"),
    ({"k": 3}, 422, "give a text, a like (an item id), or both"),
    ({"text": 5}, 422, "text"),
    ({"text": "a man", "path": "/etc/passwd"}, 422, "unknown field 'path'"),
    ("{not json", 400, "malformed JSON body"),
    ("[1, 2]", 422, "body"),
    ({"text": "a man", "after": 10**400}, 422, "after 1000000000000000000000000000000000000000... is not a "
                                              "finite time"),
    ({"text": "a man", "before": -10**400}, 422, "before -100000000000000000000000000000000000000... is not a "
                                                "finite time"),
    ({"text": "a man", "track": 10**400}, 422, "track must be a track id (an integer from 0 to 2**63 - 1), got "
                                              "1000000000000000000000000000000000000000..."),
    ({"text": "a man", "min_score": 10**400}, 422, "min_score"),
    ({"text": "a man", "rerank": 10**400}, 422, "rerank"),
    ({"text": "a man", "like": 10**400}, 404, "like: no image with id '1000000000000000000000000000000000000000'"),
])
def test_bad_search_requests_get_clear_4xx_answers(client, body, status, message):
    content = body if isinstance(body, str) else json.dumps(body)
    r = client.post("/api/search", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status and message in r.json()["error"]


def test_words_never_seen_in_training_are_left_out_and_named(client):
    r = client.post("/api/search", json={"text": "A person in a zebrastriped shirt", "k": 3})
    assert r.status_code == 200 and r.json()["ignored_words"] == ["zebrastriped"]
    plain = client.post("/api/search", json={"text": "A person in a shirt", "k": 3}).json()
    assert plain["ignored_words"] == [] and \
        [h["score"] for h in plain["results"]] == [h["score"] for h in r.json()["results"]]
    r = client.post("/api/search", json={"text": "zebrastriped quokka!", "k": 3})
    assert r.status_code == 422 and "none of the words" in r.json()["error"] and "quokka" in r.json()["error"]


def test_the_text_limit_is_500_characters_and_the_body_is_limited(client):
    assert client.post("/api/search", json={"text": "a man " * 83 + "a ", "k": 1}).status_code == 200  # 500
    big = json.dumps({"text": "a" * 20_000})
    r = client.post("/api/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["error"]

    def chunks():          # no Content-Length: the limit holds for streamed bodies too
        for _ in range(40):
            yield b"x" * 1024

    r = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("path", [
    "/api/images/../../../../etc/passwd", "/api/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/images/%252e%252e%252fetc%252fpasswd",
    "/api/images/%2Fetc%2Fpasswd", "/api/images//etc/passwd", "/api/images/0/../../etc/passwd",
    "/api/images/..%5C..%5Cetc%5Cpasswd", "/api/images/-1", "/api/images/1e1", "/api/images/0x1",
    "/api/images/%201", "/api/images/20", "/api/images/99999999999999999999", "/api/images/%00",
    "/api/images/crops%2F..%2F..%2Fetc%2Fpasswd", "/api/explain?id=..%2F..%2Fetc%2Fpasswd&text=a",
])
def test_images_are_served_only_by_id(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert b"root:" not in r.content and r.headers["content-type"].startswith("application/json")


def test_explain_endpoint(client):
    r = client.get("/api/explain", params={"id": "3", "text": QUERY})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert client.get("/api/explain", params={"id": "3", "text": QUERY}).content == r.content   # cached, same
    assert client.get("/api/explain", params={"id": "999", "text": "a"}).status_code == 404
    assert client.get("/api/explain", params={"id": "3", "text": " "}).status_code == 422
    assert client.get("/api/explain", params={"id": "3", "text": "a" * 501}).status_code == 422
    assert client.get("/api/explain", params={"id": "3"}).json()["error"] == "text is required"


def test_explain_refuses_a_text_of_no_known_word_as_search_does(client):
    searched = client.post("/api/search", json={"text": "zebrastriped quokka", "k": 3})
    explained = client.get("/api/explain", params={"id": "3", "text": "zebrastriped quokka"})
    assert explained.status_code == searched.status_code == 422
    assert explained.json()["error"] == searched.json()["error"] == (
        "none of the words of the description were seen in training (zebrastriped, quokka); describe the "
        "person's clothes, colours and what they carry")


def test_page_is_self_contained_and_safe(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'id="search-form"' in page and 'id="grid"' in page and "/api/search" in page
    assert "http://" not in page and "https://" not in page and "innerHTML" not in page
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_200_concurrent_queries_on_a_real_server(service):
    texts = [QUERY, "a person in a black shirt", "the pedestrian wears white pants", "a man with a red top"]
    client = TestClient(create_app(service=service))
    expected = {t: client.post("/api/search", json={"text": t, "k": 5}).json()["results"] for t in texts}

    async def run(base: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(http.post("/api/search", json={"text": texts[i % 4], "k": 5})
                                          for i in range(200)))

    with running_server(create_app(service=service)) as base:
        responses = asyncio.run(run(base))
    assert [r.status_code for r in responses] == [200] * 200
    for i, r in enumerate(responses):
        assert r.json()["results"] == expected[texts[i % 4]]


def test_an_image_changed_since_indexing_is_not_served(service, run_and_data_dir, tmp_path):
    folder = tmp_path / "gallery"
    shutil.copytree(run_and_data_dir / "imgs" / "test", folder)
    build_index(tmp_path / "idx", service.model, images=image_source(folder), progress=False)
    client = TestClient(create_app(tmp_path / "idx", device="cpu"))
    assert client.get("/api/images/0").status_code == 200
    victim = folder / client.post("/api/search", json={"text": "a", "k": 8}).json()["results"][0]["provenance"]["path"]
    victim.write_bytes(b"replaced")
    answers = [client.get(f"/api/images/{i}") for i in range(8)]
    assert sorted(r.status_code for r in answers) == [200] * 7 + [410]
    gone = next(r for r in answers if r.status_code == 410)
    assert "changed or gone" in gone.json()["error"] and str(tmp_path) not in gone.text


def test_default_bind_is_loopback_and_a_foreign_model_is_refused(index_dir, tmp_path):
    args = build_parser().parse_args(["serve", "--index", str(index_dir)])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    with pytest.raises(IndexStoreError, match="cannot load its model"):
        load_service(index_dir, checkpoint=tmp_path / "no-run", device="cpu")


def test_serve_on_a_port_in_use_is_refused_before_anything_loads(tmp_path, capsys):
    import socket

    from ivt.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--index", str(tmp_path / "no-index"), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out
    assert err.strip() == (f"ivt serve: error: cannot serve on 127.0.0.1:{port}: the port is already in use; "
                           f"choose another --port")
