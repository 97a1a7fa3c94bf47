"""SynthPedes: determinism, layout, splits, captions, visibility, hard negatives, safety, preview."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from PIL import Image

from ivt.synth.attributes import attribute_diff, is_valid, sample_identities
from ivt.synth.captions import (
    BAG_WORDS,
    COLOUR_WORDS,
    GLASSES_WORDS,
    HELD_WORDS,
    MAX_WORDS,
    MIN_WORDS,
    SHOE_WORDS,
    attribute_phrases,
    captions,
    tokenize,
)
from ivt.synth.generate import generate_synthpedes, split_counts, write_preview
from ivt.synth.visibility import VIEWS, visible_slots

SIZE = (96, 36)
N_IDS = 12


def _gen(path: Path, seed: int = 0, workers: int = 1) -> dict:
    return generate_synthpedes(path, N_IDS, seed, image_size=SIZE, images_per_id=(2, 4), workers=workers)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sp") / "a"
    started = time.perf_counter()
    summary = _gen(out)
    summary["measured_seconds"] = time.perf_counter() - started
    return out, summary


def _rows(root: Path) -> list[dict]:
    return json.loads((root / "reid_raw.json").read_text())


def _attrs(root: Path) -> dict:
    return json.loads((root / "attributes.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    _gen(tmp_path / "b")
    a, b = _files(root), _files(tmp_path / "b")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], name
    _gen(tmp_path / "c", seed=1)
    c = _files(tmp_path / "c")
    assert c["reid_raw.json"] != a["reid_raw.json"]
    shared = [n for n in a if n.endswith(".jpg") and n in c]
    assert all(a[n] != c[n] for n in shared)


def test_parallel_rendering_gives_the_same_bytes(dataset, tmp_path):
    root, _ = dataset
    _gen(tmp_path / "par", workers=2)
    a, b = _files(root), _files(tmp_path / "par")
    assert sorted(a) == sorted(b) and all(a[n] == b[n] for n in a)


def test_layout_and_summary(dataset):
    root, summary = dataset
    rows = _rows(root)
    assert summary["ids"] == {"train": 8, "val": 2, "test": 2}
    assert sum(summary["images"].values()) == len(rows)
    assert sum(summary["captions"].values()) == sum(len(r["captions"]) for r in rows)
    # The reported generation time is the real one (it is what `ivt synth` prints).
    # (the reported figure is rounded to the millisecond, hence the half-millisecond allowance)
    assert 0.2 * summary["measured_seconds"] < summary["seconds"] <= summary["measured_seconds"] + 0.0005
    assert sorted({r["id"] for r in rows}) == list(range(1, N_IDS + 1))
    per_id = {pid: sum(r["id"] == pid for r in rows) for pid in range(1, N_IDS + 1)}
    assert all(2 <= n <= 4 for n in per_id.values())
    for r in rows:
        assert set(r) == {"split", "captions", "file_path", "processed_tokens", "id", "att"}
        assert r["file_path"].startswith(f"{r['split']}/{r['id']:04d}/{r['id']:04d}_c")
        with Image.open(root / "imgs" / r["file_path"]) as im:
            assert im.format == "JPEG" and im.size == (SIZE[1], SIZE[0]) and im.mode == "RGB"
    marker = json.loads((root / "synthpedes.json").read_text())
    assert marker["generator"] == "synthpedes" and marker["params"]["num_ids"] == N_IDS


def test_splits_are_disjoint_by_identity(dataset):
    rows = _rows(dataset[0])
    ids = {s: {r["id"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert all(ids.values())
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert split_counts(3, (0.7, 0.15, 0.15)) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(600, (0.7, 0.15, 0.15)) == {"train": 420, "val": 90, "test": 90}


def test_captions_length_tokens_and_content(dataset):
    root = dataset[0]
    attrs = _attrs(root)
    for r in _rows(root):
        caps = r["captions"]
        assert len(caps) >= 2 and len(set(caps)) == len(caps)
        assert r["processed_tokens"] == [tokenize(c) for c in caps]
        for c, toks in zip(caps, r["processed_tokens"]):
            assert MIN_WORDS <= len(toks) <= MAX_WORDS, c
            assert all(t == t.lower() for t in toks)
            ident = attrs[str(r["id"])]["attributes"]
            colour_words = COLOUR_WORDS.get(ident["upper_colour"], (ident["upper_colour"],))
            assert any(w in c.lower() for w in colour_words), (c, ident["upper_colour"])
            wrong = {"she", "her"} if ident["gender"] == "male" else {"he", "his"}
            assert not wrong & set(toks), c


def test_images_recorded_with_view_and_visibility(dataset):
    root = dataset[0]
    attrs = _attrs(root)
    rows = {r["file_path"]: r for r in _rows(root)}
    metas = [m for rec in attrs.values() for m in rec["images"]]
    assert sorted(m["file_path"] for m in metas) == sorted(rows)
    for rec in attrs.values():
        views = [m["view"] for m in rec["images"]]
        if len(views) >= 3:
            assert {"front", "back"} <= set(views) and ({"left", "right"} & set(views))


def _mentions(text: str, words) -> bool:
    low = f" {text.lower()} "
    return any(f" {w} " in low or f" {w}." in low or f" {w}," in low for w in words)


def test_captions_only_describe_visible_attributes():
    rng = random.Random(5)
    entries = sample_identities({"train": 150}, 0.3, rng)
    checked = {"back_glasses": 0, "car_shoes": 0, "left_held": 0, "right_bag": 0}
    for e in entries:
        ident = e.identity
        for view in VIEWS:
            for occ in (None, "pole", "car"):
                vis = visible_slots(ident, view, occ)
                caps = captions(ident, vis, view, rng)
                att = attribute_phrases(ident, vis)
                text = " ".join(caps)
                if view == "back" and ident.glasses:
                    checked["back_glasses"] += 1
                    assert not _mentions(text, GLASSES_WORDS) and "glasses" not in att
                if occ == "car":
                    checked["car_shoes"] += 1
                    assert not _mentions(text, [w for ws in SHOE_WORDS.values() for w in ws] + ["shoes"])
                    assert not any(a.endswith(ident.shoes_type) for a in att)
                if view == "left" and ident.held:
                    checked["left_held"] += 1
                    assert not _mentions(text, HELD_WORDS[ident.held]) and ident.held not in att
                if view == "right" and ident.bag and ident.bag != "backpack":
                    checked["right_bag"] += 1
                    assert not _mentions(text, BAG_WORDS[ident.bag])
                if ident.glasses and view == "front":
                    assert "glasses" in att
                if ident.bag == "backpack":
                    assert f"{ident.bag_colour} backpack" in att
    assert all(n > 0 for n in checked.values()), checked


def test_att_phrases_match_identity(dataset):
    root = dataset[0]
    attrs = _attrs(root)
    for r in _rows(root):
        ident = attrs[str(r["id"])]["attributes"]
        meta = next(m for m in attrs[str(r["id"])]["images"] if m["file_path"] == r["file_path"])
        att = r["att"]
        hair = "bald head" if ident["hair_length"] == "bald" else f"{ident['hair_length']} {ident['hair_colour']} hair"
        assert att[0] == hair
        assert att[1].startswith(ident["upper_colour"] + " ") and att[1].endswith(ident["upper_type"])
        if ident["lower_type"]:
            assert f"{ident['lower_colour']} {ident['lower_type']}" in att
        assert (f"{ident['shoes_colour']} {ident['shoes_type']}" in att) == (meta["occluder"] != "car")
        assert ("glasses" in att) == (ident["glasses"] and meta["view"] != "back")


def test_hard_negatives_differ_in_one_or_two_attributes(dataset):
    entries = sample_identities({"train": 140, "val": 30, "test": 30}, 0.5, random.Random(11))
    assert len({e.identity.key() for e in entries}) == len(entries)
    assert all(is_valid(e.identity) for e in entries)
    by_pid = {e.pid: e for e in entries}
    derived = [e for e in entries if e.derived_from is not None]
    assert len(derived) >= 0.35 * len(entries)
    for e in derived:
        base = by_pid[e.derived_from]
        assert base.split == e.split
        diff = attribute_diff(base.identity, e.identity)
        assert 1 <= len(diff) <= 2 and list(e.changed) == diff
    recs = _attrs(dataset[0])
    written = [(int(k), v) for k, v in recs.items() if v["derived_from"]]
    assert written
    for _, v in written:
        assert recs[str(v["derived_from"])]["split"] == v["split"]
        assert 1 <= len(v["changed"]) <= 2
    no_hn = sample_identities({"train": 50}, 0.0, random.Random(1))
    assert all(e.derived_from is None for e in no_hn)


def test_refuses_foreign_non_empty_dir(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a previous SynthPedes output"):
        _gen(foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in foreign.iterdir()) == ["precious.txt"]
    (foreign / "reid_raw.json").write_text("[]")
    with pytest.raises(ValueError):
        _gen(foreign)


def test_regenerates_previous_output_cleanly(tmp_path):
    out = tmp_path / "sp"
    generate_synthpedes(out, 3, 0, image_size=SIZE, images_per_id=(1, 1))
    stale = out / "imgs" / "train" / "stale.jpg"
    stale.write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    generate_synthpedes(out, 4, 1, image_size=SIZE, images_per_id=(1, 1), force=True)
    assert not stale.exists()
    assert (out / "notes.txt").read_text() == "mine"
    rows = _rows(out)
    assert len(rows) == 4 and all((out / "imgs" / r["file_path"]).is_file() for r in rows)
    assert len(list((out / "imgs").rglob("*.jpg"))) == 4


@pytest.mark.parametrize("kwargs, match", [
    ({"num_ids": 2}, "num_ids"),
    ({"split_fractions": (0.5, 0.5, 0.0)}, "split_fractions"),
    ({"split_fractions": (0.7, 0.2, 0.2)}, "split_fractions"),
    ({"images_per_id": (3, 2)}, "images_per_id"),
    ({"hard_negative_fraction": 1.5}, "hard_negative_fraction"),
    ({"image_size": (36, 96)}, "image_size"),
])
def test_argument_validation(tmp_path, kwargs, match):
    args = {"num_ids": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_synthpedes(tmp_path / "x", args.pop("num_ids"), 0, **args)
    assert not (tmp_path / "x").exists()


def test_preview_writes_png(dataset, tmp_path):
    png = write_preview(dataset[0], tmp_path / "prev" / "sheet.png", num_images=6, seed=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 6 * SIZE[1] and im.height > 2 * SIZE[0]
    with pytest.raises(ValueError):
        write_preview(tmp_path, tmp_path / "nope.png")
