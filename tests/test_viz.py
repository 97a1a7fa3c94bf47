"""Tests of the retrieval result pictures (PNG grid and HTML page)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ivt.viz import (
    BORDER,
    CORRECT_COLOR,
    GAP,
    TARGET_GAP,
    TEXT_WIDTH,
    WRONG_COLOR,
    GridRow,
    grid_size,
    result_grid,
    result_html,
)


def _images(tmp_path: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = tmp_path / f"person_{i}.jpg"
        Image.new("RGB", (64, 160), (40 * i % 256, 90, 200)).save(path)
        paths.append(path)
    return paths


def _rows(tmp_path: Path) -> list[GridRow]:
    imgs = _images(tmp_path, 5)
    return [
        GridRow("A woman wearing a long red coat, black trousers and white sneakers, "
                "carrying a small bag.", imgs[:3], [True, False, True], [0.91, 0.85, 0.80]),
        GridRow("A man in a blue shirt.", imgs[2:5], [False, True, False], None,
                target=imgs[0]),
    ]


def test_result_grid_png(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    thumb_h, thumb_w = 128, 48
    out = result_grid(rows, tmp_path / "out" / "grid.png", thumb_size=(thumb_h, thumb_w))
    assert out.is_file()
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == grid_size(rows, (thumb_h, thumb_w))
        # the target row is the widest: text + target + gap + 3 thumbnails
        assert img.width == TEXT_WIDTH + thumb_w + TARGET_GAP + 3 * (thumb_w + GAP) + GAP
        rgb = img.convert("RGB")
        top = GAP
        # row 0: rank 1 correct, rank 2 wrong; sample the middle of the left border
        assert rgb.getpixel((TEXT_WIDTH + 1, top + thumb_h // 2)) == CORRECT_COLOR
        assert rgb.getpixel((TEXT_WIDTH + thumb_w + GAP + BORDER // 2, top + 1)) == WRONG_COLOR
        # row 1 starts after the target: rank 1 wrong, rank 2 correct
        row_h = (img.height - GAP) // 2
        x0 = TEXT_WIDTH + thumb_w + TARGET_GAP
        assert rgb.getpixel((x0 + 1, top + row_h + 10)) == WRONG_COLOR
        assert rgb.getpixel((x0 + thumb_w + GAP + 1, top + row_h + 10)) == CORRECT_COLOR


def test_result_html(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    out = result_html(rows, tmp_path / "page.html")
    text = out.read_text(encoding="utf-8")
    assert "A man in a blue shirt." in text
    assert "carrying a small bag." in text
    assert text.count("<img") == 3 + 3 + 1  # ranked images of both rows + one target
    assert text.count("data:image/jpeg;base64,") == 7


def test_missing_image_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    rows = [GridRow("query", [missing], [True])]
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        result_grid(rows, tmp_path / "g.png")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        result_html(rows, tmp_path / "g.html")


def test_lengths_must_match(tmp_path: Path) -> None:
    imgs = _images(tmp_path, 2)
    with pytest.raises(ValueError, match="correct flags"):
        GridRow("q", imgs, [True])
    with pytest.raises(ValueError, match="scores"):
        GridRow("q", imgs, [True, False], [0.5])
