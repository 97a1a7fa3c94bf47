"""Integrity and input handling: damaged or edited files are refused at load (training state,
checkpoint preprocessing, index values), the API refuses inputs that would give silent wrong
results, failed index writes leave no trace, and the server answers 415 for a non-JSON body."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file, save

import ivt
from helpers import trained_toy_run
from ivt.cli import main
from ivt.errors import CheckpointError, ConfigError, DataError, ImageError
from ivt.index import build as index_build
from ivt.index.build import build_index
from ivt.index.ingest import image_source
from ivt.serve import create_app, load_service
from search_helpers import write_clip

TRAIN = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.precision=fp32",
         "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.epochs=1"]
QUERY = "a person in a red shirt, with blue trousers."


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A toy dataset, a trained run of it and an index of its test split; tests spoil copies."""
    root = tmp_path_factory.mktemp("defects")
    data, run = trained_toy_run(root, TRAIN)
    index = root / "idx"
    build_index(index, ivt.load(run, device="cpu"), images=image_source(data, split="test"), progress=False)
    return {"data": data, "run": run, "index": index}


@pytest.fixture(scope="module")
def model(base):
    return ivt.load(base["run"], device="cpu")


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# -- 1. the resumable training state is verified -------------------------------------------------


def _resume(run: Path) -> int:
    return main(["train", "--resume", str(run)])


def test_resume_refuses_a_state_file_with_a_flipped_byte(base, tmp_path, capsys):
    run = shutil.copytree(base["run"], tmp_path / "run")
    state = run / "last.state.safetensors"
    data = bytearray(state.read_bytes())
    data[-40] ^= 0x01                    # inside the tensor data: still a readable safetensors file
    state.write_bytes(bytes(data))
    before = _hashes(run)
    assert _resume(run) == 2
    err = _error(capsys)
    assert f"{state}: its content does not match last.state.json (sha256 differs)" in err
    assert _hashes(run) == before


def test_resume_refuses_a_non_finite_state_naming_file_and_tensor(base, tmp_path, capsys):
    run = shutil.copytree(base["run"], tmp_path / "run")
    state = run / "last.state.safetensors"
    tensors = load_file(str(state))
    name = sorted(k for k in tensors if k.startswith("optim."))[0]
    tensors[name] = torch.full_like(tensors[name], math.nan)
    data = save(tensors)
    state.write_bytes(data)              # consistent: the recorded sha256 matches the NaN state
    info = json.loads((run / "last.state.json").read_text())
    info["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    (run / "last.state.json").write_text(json.dumps(info))
    before = _hashes(run)
    assert _resume(run) == 2
    err = _error(capsys)
    assert f"{state}: tensor {name} holds NaN or infinite values" in err and "cannot be resumed" in err
    assert _hashes(run) == before


# -- 2. the preprocessing is covered by the weights' checksum and the index fingerprint -----------


def _edit_mean(run: Path, name: str = "best", mean: tuple[float, ...] = (0.5, 0.5, 0.5)) -> None:
    path = run / f"{name}.json"
    meta = json.loads(path.read_text())
    meta["encoder"]["image_mean"] = list(mean)
    path.write_text(json.dumps(meta))


def test_an_edited_preprocessing_in_best_json_is_refused_at_load(base, tmp_path, capsys):
    run = shutil.copytree(base["run"], tmp_path / "run")
    _edit_mean(run)
    with pytest.raises(CheckpointError, match=r"image preprocessing differs from the one saved in best\.safetensors"):
        ivt.load(run, device="cpu")
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(base["data"]), "--split", "test",
                 "--out", str(tmp_path / "idx"), "--quiet"]) == 2
    err = _error(capsys)
    assert (f"{run / 'best.json'}: image preprocessing differs from the one saved in best.safetensors: "
            f"image_mean [0.5, 0.5, 0.5] (saved with the weights: [0.485, 0.456, 0.406])") in err
    assert not (tmp_path / "idx").exists()


def _as_legacy(run: Path, name: str = "best") -> None:
    """A checkpoint as this version wrote it before the preprocessing went into the weights' header."""
    weights = run / f"{name}.safetensors"
    data = save(load_file(str(weights)), metadata={"format": "ivt-checkpoint"})
    weights.write_bytes(data)
    meta = json.loads((run / f"{name}.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (run / f"{name}.json").write_text(json.dumps(meta))


def test_index_add_refuses_a_model_whose_preprocessing_differs_naming_both(base, tmp_path, capsys):
    run = shutil.copytree(base["run"], tmp_path / "run")
    _as_legacy(run)                      # old runs stay readable; their json is not covered by a checksum
    idx = tmp_path / "idx"
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(base["data"]), "--split", "test",
                 "--out", str(idx), "--quiet"]) == 0
    _edit_mean(run)
    before = _hashes(idx)
    assert main(["index", "add", "--index", str(idx), "--images", str(base["data"]), "--split", "val",
                 "--quiet"]) == 2
    err = _error(capsys)
    assert (f"index {idx} was built with another image preprocessing than checkpoint {run} has "
            f"(image_mean [0.485, 0.456, 0.406] vs [0.5, 0.5, 0.5]; index vs model)") in err
    assert _hashes(idx) == before
    assert main(["search", "--index", str(idx), QUERY]) == 2
    assert "another image preprocessing" in _error(capsys)


# -- 3. index values are checked; JSON output is always valid JSON --------------------------------


def _tamper_embeddings(index: Path, change) -> None:
    """Change the embeddings and re-record their size and sha256, as a consistent tampering would."""
    version = index / (index / "CURRENT").read_text().strip()
    path = version / "embeddings.npy"
    emb = np.load(path)
    change(emb)
    path.unlink()
    np.save(path, emb)
    manifest = json.loads((version / "manifest.json").read_text())
    data = path.read_bytes()
    manifest["files"]["embeddings.npy"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (version / "manifest.json").write_text(json.dumps(manifest))


def _strict_json(text: str):
    def refuse(name: str):
        raise AssertionError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("change, expected", [
    (lambda e: e.__setitem__(1, np.nan), "embeddings.npy row 1 holds NaN or infinite values"),
    (lambda e: e.__setitem__(2, e[2] * 2),
     "embeddings.npy row 2 has norm 2, not 1 (within 0.001): embeddings must be L2-normalised"),
])
def test_an_index_with_non_finite_or_non_unit_embeddings_is_refused(base, tmp_path, capsys, change, expected):
    idx = shutil.copytree(base["index"], tmp_path / "idx")
    _tamper_embeddings(idx, change)
    assert main(["search", "--index", str(idx), QUERY, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"index {idx}: {expected}; the index was not modified" in captured.err


def test_search_json_is_strict_json(base, capsys):
    assert main(["search", "--index", str(base["index"]), QUERY, "--json"]) == 0
    hits = _strict_json(capsys.readouterr().out)["results"]
    assert len(hits) == 6 and all(-1 <= h["score"] <= 1 for h in hits)


def test_a_model_giving_nan_gets_a_json_error_from_the_server(base, monkeypatch):
    service = load_service(base["index"], device="cpu")
    client = TestClient(create_app(service=service))
    monkeypatch.setattr(service.model, "encode_texts", lambda texts: torch.full((len(texts), 192), math.nan))
    r = client.post("/api/search", json={"text": QUERY})
    assert r.status_code == 500 and "no finite scores" in _strict_json(r.text)["error"]


# -- 4. the Python API refuses inputs that would give silent wrong results ------------------------


def test_api_refuses_bad_batch_sizes(model):
    batch = torch.zeros(2, 3, 32, 16, dtype=torch.uint8)
    for bad in (-1, 0, True, 2.5):
        with pytest.raises(ConfigError, match=f"batch_size must be a positive integer, got {bad!r}"):
            model.encode_images(batch, batch_size=bad)
        with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
            model.encode_images([batch[0]], batch_size=bad)
        with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
            model.encode_texts(["a man"], batch_size=bad)
    assert model.encode_images(batch, batch_size=1).shape == (2, 192)


def test_api_refuses_empty_images_naming_their_position_and_size(model):
    ok = torch.zeros(3, 32, 16, dtype=torch.uint8)
    with pytest.raises(ImageError, match=r"images\[1\] is empty \(Tensor of size \(3, 0, 0\)\)"):
        model.encode_images([ok, torch.zeros(3, 0, 0, dtype=torch.uint8)])
    with pytest.raises(ImageError, match=r"images\[0\] is empty \(Image of size 0x0\)"):
        model.encode_images([Image.new("RGB", (0, 0)), ok])
    with pytest.raises(ImageError, match=r"images\[1\]: .*nope\.jpg"):
        model.encode_images([ok, "nope.jpg"])


def test_api_refuses_a_bare_string_or_image_where_a_list_is_expected(model, base):
    image = next((base["data"] / "imgs" / "test").iterdir())
    with pytest.raises(DataError, match=r"texts must be a list, got a single str: pass \[text\] for one"):
        model.encode_texts("a bare string")
    for single in (str(image), image, Image.open(image), torch.zeros(3, 32, 16, dtype=torch.uint8)):
        with pytest.raises(DataError, match=r"images must be a list, got a single \w+: pass \[image\] for one"):
            model.encode_images(single)
    with pytest.raises(DataError, match="texts must be a list"):
        model.similarity("a man", [image])
    assert model.similarity(["a man"], [image]).shape == (1, 1)


def test_load_refuses_bad_arguments(base):
    with pytest.raises(CheckpointError, match="which must be 'best' or 'last', got 'bogus'"):
        ivt.load(base["run"], which="bogus")
    with pytest.raises(CheckpointError, match="run_dir must be a path .*got NoneType"):
        ivt.load(None)


# -- 5. explain refuses a meaningless number of samples ------------------------------------------


@pytest.mark.parametrize("samples", ["0", "-3", "5000"])
def test_explain_refuses_a_bad_sample_count(base, tmp_path, capsys, samples):
    image = next((base["data"] / "imgs" / "test").iterdir())
    out = tmp_path / "e.png"
    assert main(["explain", "--checkpoint", str(base["run"]), "--image", str(image), QUERY,
                 "--out", str(out), "--samples", samples]) == 2
    assert (f"samples must be a positive integer from 1 to 4096 (masked encodings; 64 is the default, more "
            f"gives smoother maps), got {samples}") in _error(capsys)
    assert not out.exists()


def test_explain_api_refuses_a_bad_sample_count(model, base):
    from ivt.explain import explain, similarity_without

    image = next((base["data"] / "imgs" / "test").iterdir())
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="samples must be a positive integer from 1 to 4096"):
            explain(model, image, QUERY, samples=bad)
    with pytest.raises(DataError, match="texts must be a list of strings"):
        similarity_without(model, image, "a man", [[0]])


# -- 6. failed index writes leave no trace --------------------------------------------------------


def test_a_failed_build_leaves_the_output_path_as_it_was(base, tmp_path, capsys):
    bad_images = tmp_path / "bad"
    bad_images.mkdir()
    (bad_images / "x.jpg").write_text("not an image")
    out = tmp_path / "new" / "deeper" / "idx"
    assert main(["index", "build", "--checkpoint", str(base["run"]), "--images", str(bad_images),
                 "--out", str(out), "--quiet"]) == 2
    assert "nothing could be indexed: 1 unreadable file(s)" in _error(capsys)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["index", "build", "--checkpoint", str(base["run"]), "--images", str(bad_images),
                 "--out", str(empty), "--quiet"]) == 2
    assert list(empty.iterdir()) == []


def test_a_failed_rebuild_or_add_leaves_an_existing_index_untouched(base, tmp_path, capsys, monkeypatch):
    idx = shutil.copytree(base["index"], tmp_path / "idx")
    before = _hashes(idx)
    assert main(["index", "build", "--checkpoint", str(base["run"]), "--images", str(base["data"]),
                 "--out", str(idx), "--force", "--backend", "ivfpq", "--quiet"]) == 2
    assert "ivfpq backend needs at least 256 items" in _error(capsys)
    assert _hashes(idx) == before and sorted(p.name for p in idx.iterdir()) == [".lock", "CURRENT", "v000001"]

    def fail(*_args, **_kwargs):          # a failure after the video's crops were stored
        raise DataError("the search structure cannot be extended")

    monkeypatch.setattr(index_build, "_backend_for", fail)
    clip = tmp_path / "walk.avi"
    write_clip(clip, frames=4)
    assert main(["index", "add", "--index", str(idx), "--video", str(clip),
                 "--detector", "search_helpers:make_colour_detector", "--quiet"]) == 2
    assert "cannot be extended" in _error(capsys)
    assert _hashes(idx) == before and not (idx / "crops").exists()


# -- 7. the server wants JSON on its JSON endpoint ------------------------------------------------


@pytest.fixture(scope="module")
def client(base):
    return TestClient(create_app(service=load_service(base["index"], device="cpu")))


@pytest.mark.parametrize("headers", [{"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"}, {}])
def test_search_with_a_non_json_content_type_is_415(client, headers):
    r = client.post("/api/search", content=json.dumps({"text": QUERY}), headers=headers)
    assert r.status_code == 415
    declared = headers.get("content-type", "none")
    assert _strict_json(r.text) == {"error": f"Content-Type must be application/json, got {declared!r}"}


def test_search_with_json_content_types_and_malformed_json(client):
    for media in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        r = client.post("/api/search", content=json.dumps({"text": QUERY, "k": 2}), headers={"content-type": media})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
    r = client.post("/api/search", content="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "malformed JSON body"}

