"""Image checks and dataset statistics on tiny datasets with real image files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ivt.data import DataError, PedesDataset, check_images, format_stats, load_dataset, split_stats

ENTRIES = [
    {"image": "a/0001.jpg", "id": 8, "split": "train", "captions": ["A man in a red coat.", "Red."],
     "attributes": ["red coat"]},
    {"image": "a/0002.jpg", "id": 8, "split": "train", "caption": "The same man walking."},
    {"image": "a/0003.png", "id": 2, "split": "train", "caption": "A woman."},
    {"image": "b/0004.jpg", "id": 70, "split": "val", "captions": ["A boy with a hat.", "A boy."]},
    {"image": "c/0005.jpg", "id": 90, "split": "test", "caption": "An old woman with a cane."},
    {"image": "c/0006.jpg", "id": 91, "split": "test", "caption": "A tall man."},
]


def noise_image(seed: int) -> Image.Image:
    """A small random RGB image (noise, so JPEGs have enough data to truncate)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 24, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def make_dataset(root: Path) -> PedesDataset:
    """A JSONL dataset of ``ENTRIES`` under ``root`` with real images; loaded."""
    root.mkdir(parents=True, exist_ok=True)
    lines = "\n".join(json.dumps(e) for e in ENTRIES) + "\n"
    (root / "data.jsonl").write_text(lines, encoding="utf-8")
    for i, entry in enumerate(ENTRIES):
        target = root / "imgs" / entry["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        noise_image(i).save(target)
    return load_dataset(root)


def snapshot(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its modification time, to detect writes."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def check_error(dataset: PedesDataset) -> str:
    """The message of the DataError that checking ``dataset``'s images raises."""
    with pytest.raises(DataError) as err:
        check_images(dataset)
    return str(err.value)


def test_check_images_passes_and_writes_nothing(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    before = snapshot(tmp_path)
    check_images(dataset)
    check_images(dataset, progress=True)
    assert snapshot(tmp_path) == before


def test_missing_corrupt_and_truncated_images(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    imgs = tmp_path / "imgs"
    (imgs / "a/0002.jpg").unlink()
    (imgs / "b/0004.jpg").write_bytes(b"this is not a jpeg at all" * 20)
    for name in ("c/0005.jpg", "a/0003.png"):
        data = (imgs / name).read_bytes()
        (imgs / name).write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    message = check_error(dataset)
    assert snapshot(tmp_path) == before
    lines = message.splitlines()
    assert lines[0] == (f"{imgs}: 4 problems with the images of {tmp_path / 'data.jsonl'} "
                        "(6 images checked):")
    assert f"image 'a/0002.jpg' (train, id 8): missing file {imgs / 'a/0002.jpg'}" in lines[1]
    assert lines[2].strip().startswith(f"image 'a/0003.png' (train, id 2): cannot decode "
                                       f"{imgs / 'a/0003.png'}")
    assert lines[3].strip().startswith(f"image 'b/0004.jpg' (val, id 70): cannot decode "
                                       f"{imgs / 'b/0004.jpg'}")
    assert lines[4].strip().startswith(f"image 'c/0005.jpg' (test, id 90): cannot decode "
                                       f"{imgs / 'c/0005.jpg'}")
    assert "truncated" in lines[4]


def test_directory_in_place_of_image(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    target = tmp_path / "imgs" / "c/0006.jpg"
    target.unlink()
    target.mkdir()
    assert "image 'c/0006.jpg' (test, id 91): not a file" in check_error(dataset)


def test_split_stats(tmp_path: Path) -> None:
    stats = split_stats(make_dataset(tmp_path))
    assert [s["split"] for s in stats] == ["train", "val", "test"]
    train, val, test = stats
    assert (train["ids"], train["images"], train["captions"]) == (2, 3, 4)
    assert train["captions_per_image"] == pytest.approx(4 / 3)
    assert train["mean_caption_words"] == pytest.approx((6 + 1 + 4 + 2) / 4)
    assert train["images_with_attributes"] == 1
    assert (val["ids"], val["images"], val["captions"], val["captions_per_image"]) == (1, 1, 2, 2.0)
    assert (test["ids"], test["images"], test["captions"]) == (2, 2, 2)
    assert test["mean_caption_words"] == pytest.approx(4.5)
    assert val["images_with_attributes"] == test["images_with_attributes"] == 0


def test_format_stats_table(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    text = format_stats(dataset)
    lines = text.splitlines()
    assert lines[0].startswith("jsonl: ") and str(tmp_path / "data.jsonl") in lines[0]
    table = lines[1:]
    assert table[0].split() == ["split", "ids", "images", "captions", "captions/image",
                                "words/caption", "with", "attributes"]
    assert len({len(line) for line in table}) == 1
    rows = {line.split()[0]: line.split()[1:] for line in table if line[0].isalpha()}
    assert rows["train"][:3] == ["2", "3", "4"]
    assert rows["total"] == ["5", "6", "8", "1.33", "3.6", "1"]
    assert list(rows) == ["split", "train", "val", "test", "total"]


def test_stats_of_a_single_split(tmp_path: Path) -> None:
    (tmp_path / "one.jsonl").write_text(json.dumps(ENTRIES[4]) + "\n", encoding="utf-8")
    dataset = load_dataset(tmp_path / "one.jsonl")
    assert [s["split"] for s in split_stats(dataset)] == ["test"]
    assert "total" in format_stats(dataset)
