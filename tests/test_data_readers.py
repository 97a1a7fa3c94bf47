"""Annotation readers: every format on tiny files, auto-detection, and every class of bad input."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from ivt.data import FORMATS, DataError, PedesDataset, load_dataset


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` as JSON at ``path`` (creating directories); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def write_images(root: Path, dataset: PedesDataset) -> None:
    """Write a tiny real image for every record of ``dataset`` under ``root``."""
    for record in dataset.records:
        target = root / record.image
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 32), (120, 30, 30)).save(target)


def snapshot(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its modification time, to detect writes."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def cuhk_raw() -> list[dict]:
    """A tiny CUHK-PEDES ``reid_raw.json``: two ids in train, one val and one test image."""
    return [
        {"split": "train", "captions": [" A man in red. ", "He walks."],
         "file_path": "CUHK01/a.png", "processed_tokens": [["a"], ["he"]], "id": 12},
        {"split": "train", "captions": ["A woman."], "file_path": "CUHK01/b.png",
         "processed_tokens": [["a"]], "id": 3,
         "att": ["white shirt", "black pants", "white shirt"]},
        {"split": "train", "captions": ["A woman again."], "file_path": "CUHK01/c.png",
         "processed_tokens": [["a"]], "id": 3, "att": {"0": "white shirt"}},
        {"split": "val", "captions": ["Someone.", "Another."], "file_path": "CUHK02/d.png",
         "processed_tokens": [], "id": 40},
        {"split": "test", "captions": ["A child."], "file_path": "test/e.png",
         "processed_tokens": [], "id": 41},
    ]


def icfg_raw() -> list[dict]:
    """A tiny ICFG-PEDES file: one caption per image, train and test only."""
    return [
        {"id": 7, "file_path": "train/0007/0007_a.jpg", "captions": ["A man."],
         "processed_tokens": [["a"]], "split": "train"},
        {"id": 2, "file_path": "train/0002/0002_a.jpg", "captions": ["A woman."],
         "processed_tokens": [["a"]], "split": "train"},
        {"id": 2, "file_path": "train/0002/0002_b.jpg", "captions": ["A woman, side."],
         "processed_tokens": [["a"]], "split": "train"},
        {"id": 3200, "file_path": "test/3200/3200_a.jpg", "captions": ["A boy."],
         "processed_tokens": [["a"]], "split": "test"},
    ]


def rstp_raw() -> list[dict]:
    """A tiny RSTPReid ``data_captions.json`` (``img_path``, two captions per image)."""
    return [
        {"id": 0, "img_path": "0000_c1_0001.jpg", "captions": ["One.", "Two."], "split": "train"},
        {"id": 5, "img_path": "0005_c2_0001.jpg", "captions": ["Three.", "Four."],
         "split": "train"},
        {"id": 3800, "img_path": "3800_c1_0001.jpg", "captions": ["Five.", "Six."], "split": "val"},
        {"id": 3900, "img_path": "3900_c1_0001.jpg", "captions": ["Seven.", "Eight."],
         "split": "test"},
    ]


def ivt_cuhk() -> dict:
    """A tiny official IVT ``cuhk_pedes_att.json``: one entry per caption, ``att`` dicts."""
    return {
        "train": [
            {"id": 0, "file_path": "CUHK01/a.png", "captions": "first caption",
             "processed_tokens": ["first"], "att": {"3": "red coat", "9": "blue jeans"}},
            {"id": 1, "file_path": "CUHK01/b.png", "captions": "other person", "att": {}},
            {"id": 0, "file_path": "CUHK01/a.png", "captions": " second caption ",
             "att": {"1": "blue jeans", "2": "black shoes"}},
        ],
        "val": [{"id": 20, "file_path": "val/x.png", "captions": "val caption", "att": ["hat"]}],
        "test": [
            {"id": 30, "file_path": "test/y.png", "captions": "test one", "att": {}},
            {"id": 30, "file_path": "test/y.png", "captions": "test two", "att": {}},
        ],
    }


def ivt_icfg() -> dict:
    """A tiny official IVT ``ICFG_PEDES_VISTXT.json`` with query/gallery copies of test."""
    test = [{"id": 3200, "file_path": "test/3200/a.jpg", "captions": ["A boy."],
             "processed_tokens": [["a"]]}]
    return {
        "train": [{"id": 0, "file_path": "train/0001/a.jpg", "captions": ["A man."],
                   "processed_tokens": [["a"]]},
                  {"id": 1, "file_path": "train/0002/a.jpg", "captions": ["A woman."],
                   "processed_tokens": [["a"]]}],
        "test": test, "query": test, "gallery": test,
    }


def ivt_rstp() -> dict:
    """A tiny official IVT ``rstpreid_vistxt.json``: one entry per caption."""
    return {
        "train": [{"id": 0, "img_path": "a.jpg", "captions": "one"},
                  {"id": 0, "img_path": "a.jpg", "captions": "two"},
                  {"id": 1, "img_path": "b.jpg", "captions": "three"}],
        "val": [{"id": 3800, "img_path": "v.jpg", "captions": "four"}],
        "test": [{"id": 3900, "img_path": "t.jpg", "captions": "five"},
                 {"id": 3900, "img_path": "t.jpg", "captions": "six"}],
    }


JSONL_LINES = [
    {"image": "cam1/0001.jpg", "id": 12, "split": "train", "captions": ["A man.", "In red."],
     "attributes": ["red jacket"]},
    {"image": "cam1/0002.jpg", "id": 4, "split": "train", "caption": " A woman. "},
    {"image": "cam2/0003.jpg", "id": 50, "split": "val", "caption": "A child."},
    {"image": "cam2/0004.jpg", "id": 60, "split": "test", "captions": ["An old man."]},
]


def write_jsonl(path: Path, lines: list[object], blank_after: int | None = None) -> Path:
    """Write JSONL (strings verbatim), optionally with a blank line at ``blank_after``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = [json.dumps(obj) if not isinstance(obj, str) else obj for obj in lines]
    if blank_after is not None:
        text.insert(blank_after, "   ")
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


# One tiny file per format under its canonical file name: (format, file name, data).
SAMPLES = [
    ("cuhk-pedes", "reid_raw.json", cuhk_raw),
    ("icfg-pedes", "ICFG-PEDES.json", icfg_raw),
    ("rstpreid", "data_captions.json", rstp_raw),
    ("ivt-cuhk", "cuhk_pedes_att.json", ivt_cuhk),
    ("ivt-icfg", "ICFG_PEDES_VISTXT.json", ivt_icfg),
    ("ivt-rstp", "rstpreid_vistxt.json", ivt_rstp),
]


def test_formats_listed() -> None:
    assert set(FORMATS) == {s[0] for s in SAMPLES} | {"jsonl"}


def test_cuhk_pedes_raw(tmp_path: Path) -> None:
    ds = load_dataset(write_json(tmp_path / "reid_raw.json", cuhk_raw()))
    assert ds.format == "cuhk-pedes"
    assert ds.annotation == tmp_path / "reid_raw.json"
    assert ds.image_root == tmp_path / "imgs"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [3, 1, 1]
    assert ds.splits == ["train", "val", "test"]
    assert ds.train_pid_map == {3: 0, 12: 1}
    a, b, c, d, e = ds.records
    assert (a.pid, a.raw_pid, a.captions) == (1, 12, ("A man in red.", "He walks."))
    assert (b.pid, b.raw_pid, b.attributes) == (0, 3, ("white shirt", "black pants"))
    assert c.attributes == ("white shirt",) and a.attributes == ()
    assert (d.pid, d.raw_pid, d.split) == (40, 40, "val") and (e.pid, e.split) == (41, "test")
    assert ds.image_path(a) == tmp_path / "imgs" / "CUHK01" / "a.png"


@pytest.mark.parametrize("name", ["ICFG-PEDES.json", "ICFG_PEDES.json", "icfg-pedes.json"])
def test_icfg_pedes_name_variants(tmp_path: Path, name: str) -> None:
    write_json(tmp_path / name, icfg_raw())
    ds = load_dataset(tmp_path)
    assert ds.format == "icfg-pedes" and ds.annotation.name == name
    assert ds.splits == ["train", "test"]
    assert [r.pid for r in ds.records] == [1, 0, 0, 3200]
    assert ds.train_pid_map == {2: 0, 7: 1}
    assert all(len(r.captions) == 1 for r in ds.records)


def test_icfg_pedes_has_no_val_split(tmp_path: Path) -> None:
    data = icfg_raw()
    data[3]["split"] = "val"
    path = write_json(tmp_path / "ICFG-PEDES.json", data)
    with pytest.raises(DataError) as err:
        load_dataset(path)
    message = str(err.value)
    assert str(path) in message and "entry [3] (test/3200/3200_a.jpg)" in message
    assert "field 'split'" in message and "'val'" in message and "allowed: train, test" in message


def test_rstpreid_uses_img_path(tmp_path: Path) -> None:
    ds = load_dataset(write_json(tmp_path / "data_captions.json", rstp_raw()))
    assert ds.format == "rstpreid"
    assert [r.image for r in ds.records][:2] == ["0000_c1_0001.jpg", "0005_c2_0001.jpg"]
    assert ds.train_pid_map == {0: 0, 5: 1}
    assert sum(len(r.captions) for r in ds.records) == 8


def test_ivt_cuhk_groups_captions_and_attributes(tmp_path: Path) -> None:
    ds = load_dataset(write_json(tmp_path / "cuhk_pedes_att.json", ivt_cuhk()))
    assert ds.format == "ivt-cuhk"
    assert [(r.image, r.split) for r in ds.records] == [
        ("CUHK01/a.png", "train"), ("CUHK01/b.png", "train"), ("val/x.png", "val"),
        ("test/y.png", "test")]
    a, b, v, t = ds.records
    assert a.captions == ("first caption", "second caption")
    assert a.attributes == ("red coat", "blue jeans", "black shoes")
    assert b.attributes == () and v.attributes == ("hat",)
    assert t.captions == ("test one", "test two") and t.pid == 30
    assert ds.train_pid_map == {0: 0, 1: 1} and (a.pid, b.pid) == (0, 1)


def test_ivt_icfg_ignores_query_and_gallery(tmp_path: Path) -> None:
    ds = load_dataset(write_json(tmp_path / "ICFG_PEDES_VISTXT.json", ivt_icfg()))
    assert ds.format == "ivt-icfg"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [2, 0, 1]


def test_ivt_rstp_groups_captions(tmp_path: Path) -> None:
    ds = load_dataset(write_json(tmp_path / "rstpreid_vistxt.json", ivt_rstp()))
    assert ds.format == "ivt-rstp"
    assert [r.captions for r in ds.records] == [("one", "two"), ("three",), ("four",),
                                                ("five", "six")]


def test_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", JSONL_LINES, blank_after=2)
    ds = load_dataset(path)
    assert ds.format == "jsonl" and len(ds.records) == 4
    first, second, val, test = ds.records
    assert first.captions == ("A man.", "In red.") and first.attributes == ("red jacket",)
    assert second.captions == ("A woman.",) and (first.pid, second.pid) == (1, 0)
    assert (val.pid, val.split, test.pid) == (50, "val", 60)


def test_jsonl_errors_name_line_numbers(tmp_path: Path) -> None:
    lines: list[object] = [JSONL_LINES[0], '{"image": "x.jpg", "id": 1,', JSONL_LINES[1],
                           {"image": "y.jpg", "id": 2, "split": "train", "caption": "a",
                            "captions": ["b"]},
                           {"image": "z.jpg", "id": 3, "split": "train"}]
    path = write_jsonl(tmp_path / "mine.jsonl", lines, blank_after=1)
    with pytest.raises(DataError) as err:
        load_dataset(path)
    message = str(err.value)
    assert message.splitlines()[0] == f"{path}: 3 problems in the jsonl annotation:"
    assert "line 3: malformed JSON at column" in message
    assert "line 5 (y.jpg): give either 'captions'" in message
    assert "line 6 (z.jpg): missing field 'captions' (or 'caption')" in message


@pytest.mark.parametrize("fmt,name,make", SAMPLES)
def test_auto_detection_from_directory_and_file(tmp_path: Path, fmt: str, name: str,
                                                make: Callable[[], object]) -> None:
    write_json(tmp_path / name, make())
    assert load_dataset(tmp_path).format == fmt
    assert load_dataset(tmp_path / name).format == fmt
    assert load_dataset(tmp_path, format=fmt).format == fmt


@pytest.mark.parametrize("fmt,name,make", SAMPLES)
def test_auto_detection_from_json_shape(tmp_path: Path, fmt: str, name: str,
                                        make: Callable[[], object]) -> None:
    path = write_json(tmp_path / "annotations.json", make())
    assert load_dataset(path).format == fmt


def test_auto_detection_of_jsonl_with_other_suffix(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.txt", JSONL_LINES)
    assert load_dataset(tmp_path / "data.txt").format == "jsonl"
    write_jsonl(tmp_path / "sub" / "train.jsonl", JSONL_LINES)
    assert load_dataset(tmp_path / "sub").format == "jsonl"


def test_unknown_shape_lists_formats(tmp_path: Path) -> None:
    path = write_json(tmp_path / "annotations.json", {"people": []})
    with pytest.raises(DataError) as err:
        load_dataset(path)
    message = str(err.value)
    assert str(path) in message and "cannot tell the annotation format" in message
    assert all(fmt in message for fmt in FORMATS) and "reid_raw.json" in message


def test_directory_without_or_with_several_annotations(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match="no annotation file found"):
        load_dataset(tmp_path)
    write_json(tmp_path / "reid_raw.json", cuhk_raw())
    write_json(tmp_path / "cuhk_pedes_att.json", ivt_cuhk())
    with pytest.raises(DataError, match=r"several annotation files found \(cuhk_pedes_att.json, "
                                        r"reid_raw.json\)"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path, format="ivt-cuhk").format == "ivt-cuhk"
    with pytest.raises(DataError, match="no annotation file for format rstpreid"):
        load_dataset(tmp_path, format="rstpreid")


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "nope.json")
    with pytest.raises(DataError, match="unknown format 'coco'.*cuhk-pedes"):
        load_dataset(tmp_path, format="coco")


def test_image_root_override(tmp_path: Path) -> None:
    path = write_json(tmp_path / "data_captions.json", rstp_raw())
    assert load_dataset(path, image_root=tmp_path / "pics").image_root == tmp_path / "pics"


def load_error(path: Path, fmt: str = "auto") -> str:
    """The message of the DataError that loading ``path`` raises."""
    with pytest.raises(DataError) as err:
        load_dataset(path, format=fmt)
    return str(err.value)


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "reid_raw.json"
    path.write_text('[\n  {"id": 1,\n   "split": "train",}\n]\n', encoding="utf-8")
    message = load_error(path)
    assert message.startswith(f"{path}: malformed JSON at line 3, column")



DEEP = "[" * 100_000 + "]" * 100_000
ENTRY = '{"image": "a.jpg", "id": 1, "split": "train", "captions": ["a man"]}'


@pytest.mark.parametrize("name, text, where", [
    ("reid_raw.json", DEEP, ""),                              # a named format
    ("mine.json", '{"train": ' + DEEP + "}", ""),             # auto-detected from the JSON
    ("mine.jsonl", f"{ENTRY}\n{DEEP}\n", " line 2"),         # one line of a JSONL file
    ("mine.json", f"{ENTRY}\n{DEEP}\n", " line 2"),          # JSONL told by its first line
    ("other.json", f"{DEEP}\n{ENTRY}\n", ""),                # too deep before JSONL can be told
])
def test_json_nested_too_deeply_is_a_bad_annotation_file_naming_it(tmp_path: Path, name, text, where) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert load_error(path) == f"{path}{where} is not valid JSON (nested too deeply)"

def test_wrong_top_level(tmp_path: Path) -> None:
    message = load_error(write_json(tmp_path / "reid_raw.json", ivt_cuhk()))
    assert str(tmp_path / "reid_raw.json") in message
    assert "top level must be a JSON array" in message and "got an object" in message
    message = load_error(write_json(tmp_path / "x.json", cuhk_raw()), "ivt-cuhk")
    assert "top level must be a JSON object keyed by split" in message and "got an array" in message


def test_bad_fields_are_all_reported(tmp_path: Path) -> None:
    data = cuhk_raw()
    del data[0]["id"]
    data[1]["id"] = "3"
    data[2]["id"] = True
    data[3]["captions"] = []
    data[4]["captions"] = ["fine", "   "]
    data.append({"split": "dev", "captions": "not a list", "file_path": "z.png", "id": -2})
    data.append(7)
    path = write_json(tmp_path / "reid_raw.json", data)
    message = load_error(path)
    lines = message.splitlines()
    assert lines[0] == f"{path}: 9 problems in the cuhk-pedes annotation:"
    expected = [
        "entry [0] (CUHK01/a.png): missing field 'id'",
        "entry [1] (CUHK01/b.png): field 'id': expected an integer, got string '3'",
        "entry [2] (CUHK01/c.png): field 'id': expected an integer, got boolean true",
        "entry [3] (CUHK02/d.png): field 'captions': empty list",
        "entry [4] (test/e.png): field 'captions'[1]: empty caption",
        "entry [5] (z.png): field 'id': must be >= 0, got -2",
        "entry [5] (z.png): field 'split': unknown split 'dev' (allowed: train, val, test)",
        "entry [5] (z.png): field 'captions': expected an array of strings, got string",
        "entry [6]: expected a JSON object, got integer 7",
    ]
    for line, start in zip(lines[1:], expected):
        assert line.strip().startswith(start)


def test_missing_image_key_and_bad_path(tmp_path: Path) -> None:
    data = rstp_raw()
    data[0]["file_path"] = data[0].pop("img_path")
    data[1]["img_path"] = "/abs/x.jpg"
    message = load_error(write_json(tmp_path / "data_captions.json", data))
    assert "entry [0]: missing field 'img_path'" in message
    assert "entry [1] (/abs/x.jpg): field 'img_path': '/abs/x.jpg' must be relative" in message


def test_problem_list_is_capped(tmp_path: Path) -> None:
    data = [{"split": "train", "captions": ["a"], "file_path": f"{i}.png", "id": "x"}
            for i in range(30)]
    message = load_error(write_json(tmp_path / "reid_raw.json", data))
    lines = message.splitlines()
    assert "30 problems" in lines[0] and len(lines) == 22 and lines[-1].strip() == "... and 10 more"


def test_conflicting_duplicate_ids_name_both_entries(tmp_path: Path) -> None:
    data = cuhk_raw()
    data.append(dict(data[1], id=99))
    message = load_error(write_json(tmp_path / "reid_raw.json", data))
    assert ("entry [5] (CUHK01/b.png): image listed twice with conflicting ids: field 'id' is 99 "
            "here and 3 at entry [1] (CUHK01/b.png)") in message


def test_same_image_twice_in_per_image_format(tmp_path: Path) -> None:
    data = icfg_raw()
    data.append(dict(data[0]))
    message = load_error(write_json(tmp_path / "ICFG_PEDES.json", data))
    assert "entry [4] (train/0007/0007_a.jpg): image listed twice (also at entry [0]" in message


def test_per_caption_conflicts(tmp_path: Path) -> None:
    data = ivt_rstp()
    data["train"][1]["id"] = 7
    data["test"].append({"id": 0, "img_path": "a.jpg", "captions": "x"})
    data["dev"] = []
    data["train"].append({"id": 2, "img_path": "c.jpg", "captions": ["as list"]})
    message = load_error(write_json(tmp_path / "rstpreid_vistxt.json", data))
    assert "entry train[1] (a.jpg): image listed twice with conflicting ids: field 'id' is 7 " \
           "here and 0 at entry train[0] (a.jpg)" in message
    assert "entry test[2] (a.jpg): image listed twice in different splits" in message
    assert "key 'dev': unknown split 'dev' (allowed: train, val, test)" in message
    assert "entry train[3] (c.jpg): field 'captions': expected one caption string" in message


def test_bad_attributes(tmp_path: Path) -> None:
    data = ivt_cuhk()
    data["train"][0]["att"] = {"3": 5}
    data["train"][1]["att"] = "red coat"
    message = load_error(write_json(tmp_path / "cuhk_pedes_att.json", data))
    assert "entry train[0] (CUHK01/a.png): field 'att'['3']: expected a string, got integer 5" \
        in message
    assert "entry train[1] (CUHK01/b.png): field 'att': expected an array or object" in message


def test_empty_annotation(tmp_path: Path) -> None:
    message = load_error(write_json(tmp_path / "reid_raw.json", []))
    assert "has no entries" in message


def test_loading_writes_nothing(tmp_path: Path) -> None:
    for fmt, name, make in SAMPLES:
        root = tmp_path / fmt
        write_json(root / name, make())
        write_images(root / "imgs", load_dataset(root))
    write_jsonl(tmp_path / "jsonl" / "data.jsonl", JSONL_LINES)
    before = snapshot(tmp_path)
    for fmt in FORMATS:
        assert load_dataset(tmp_path / fmt).format == fmt
    with pytest.raises(DataError):
        load_dataset(tmp_path / "jsonl" / "data.jsonl", format="cuhk-pedes")
    assert snapshot(tmp_path) == before
