"""Pictures of retrieval results: a PNG grid (Pillow only) and a self-contained HTML page.

Each row shows one text query: the wrapped query on the left, optionally an image of the true
person (separated by a gap), then the top-k gallery images in rank order with a green border
when the image has the query's identity and a red one when not, and the rank (and score) below.
"""
from __future__ import annotations

import base64
import html
import io
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["GridRow", "result_grid", "result_html", "grid_size", "CORRECT_COLOR", "WRONG_COLOR"]

CORRECT_COLOR = (0, 170, 0)
WRONG_COLOR = (210, 0, 0)
TARGET_COLOR = (60, 60, 200)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
BORDER = 4          # px, drawn inside each thumbnail cell
GAP = 6             # px between thumbnails
TARGET_GAP = 24     # px between the target image and the ranked list
LINE_CHARS = 40     # query wrap width
TEXT_WIDTH = 260    # px column for the query text
LINE_HEIGHT = 12
CAPTION_HEIGHT = 2 * LINE_HEIGHT + 4


@dataclass
class GridRow:
    """One query: its text, the ranked top-k gallery images and whether each is correct.

    ``scores`` (same length as ``images``) are printed under the thumbnails when given;
    ``target`` is an image of the true person, drawn first and set apart.
    """

    query: str
    images: list[Path]
    correct: list[bool]
    scores: list[float] | None = None
    target: Path | None = None

    def __post_init__(self) -> None:
        self.images = [Path(p) for p in self.images]
        self.target = Path(self.target) if self.target is not None else None
        if len(self.correct) != len(self.images):
            raise ValueError(f"query {self.query[:40]!r}: {len(self.images)} images but "
                             f"{len(self.correct)} correct flags")
        if self.scores is not None and len(self.scores) != len(self.images):
            raise ValueError(f"query {self.query[:40]!r}: {len(self.images)} images but "
                             f"{len(self.scores)} scores")

    def paths(self) -> list[Path]:
        """Every image the row shows (target first)."""
        return ([self.target] if self.target is not None else []) + list(self.images)


def _check_files(rows: Sequence[GridRow]) -> None:
    missing = [str(p) for row in rows for p in row.paths() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")


def _thumb(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
    """(width, height) cell: the image resized into the inside of a ``color`` border."""
    width, height = size
    cell = Image.new("RGB", size, color)
    with Image.open(path) as img:
        inner = img.convert("RGB").resize((width - 2 * BORDER, height - 2 * BORDER),
                                          Image.BICUBIC)
    cell.paste(inner, (BORDER, BORDER))
    return cell


def grid_size(rows: Sequence[GridRow], thumb_size: tuple[int, int] = (128, 48)) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that :func:`result_grid` draws for ``rows``."""
    thumb_h, thumb_w = thumb_size
    row_h = max(thumb_h + CAPTION_HEIGHT,
                max((len(_wrap(r.query)) * LINE_HEIGHT for r in rows), default=0)) + GAP
    widths = [TEXT_WIDTH + (thumb_w + TARGET_GAP if r.target is not None else 0)
              + len(r.images) * (thumb_w + GAP) for r in rows]
    return max(widths, default=TEXT_WIDTH) + GAP, GAP + row_h * len(rows)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, LINE_CHARS) or [""]


MIN_SPACE_PX = 4  # Pillow's default font draws a space about 1 px wide: words would run together


def _draw_line(draw: ImageDraw.ImageDraw, xy: tuple[int, int], line: str, font, fill) -> None:
    """Draw ``line`` word by word with at least ``MIN_SPACE_PX`` between words."""
    x, y = xy
    space = max(draw.textlength(" ", font=font), MIN_SPACE_PX)
    for word in line.split():
        draw.text((x, y), word, fill=fill, font=font)
        x += draw.textlength(word, font=font) + space


def result_grid(rows: Sequence[GridRow], out_path: str | Path, *,
                thumb_size: tuple[int, int] = (128, 48)) -> Path:
    """Draw ``rows`` into a PNG at ``out_path`` and return its path.

    ``thumb_size`` is (height, width) of each thumbnail cell, border included (person images
    are tall). Raises FileNotFoundError naming every missing image file.
    """
    _check_files(rows)
    thumb_h, thumb_w = thumb_size
    if thumb_h <= 2 * BORDER or thumb_w <= 2 * BORDER:
        raise ValueError(f"thumb_size {thumb_size} is too small for a {BORDER} px border")
    width, height = grid_size(rows, thumb_size)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    row_h = (height - GAP) // max(len(rows), 1)
    for i, row in enumerate(rows):
        top = GAP + i * row_h
        for j, line in enumerate(_wrap(row.query)):
            _draw_line(draw, (GAP, top + j * LINE_HEIGHT), line, font, TEXT_COLOR)
        x = TEXT_WIDTH
        if row.target is not None:
            canvas.paste(_thumb(row.target, (thumb_w, thumb_h), TARGET_COLOR), (x, top))
            draw.text((x, top + thumb_h + 2), "target", fill=TEXT_COLOR, font=font)
            x += thumb_w + TARGET_GAP
        for k, (path, ok) in enumerate(zip(row.images, row.correct)):
            color = CORRECT_COLOR if ok else WRONG_COLOR
            canvas.paste(_thumb(path, (thumb_w, thumb_h), color), (x, top))
            draw.text((x, top + thumb_h + 2), f"#{k + 1}", fill=color, font=font)
            if row.scores is not None:
                draw.text((x, top + thumb_h + 2 + LINE_HEIGHT), f"{row.scores[k]:.3f}",
                          fill=TEXT_COLOR, font=font)
            x += thumb_w + GAP
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out


def image_data_uri(source: str | Path | bytes, max_height: int = 256) -> str:
    """An image (a path or its encoded bytes) as a base64 JPEG ``data:`` URI, downscaled to
    ``max_height`` at most: self-contained HTML pages (result grids, search results)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        img = img.convert("RGB")
        if img.height > max_height:
            img = img.resize((max(1, round(img.width * max_height / img.height)), max_height),
                             Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = ("body{font-family:sans-serif}td{vertical-align:top;padding:4px;text-align:center}"
        "td.q{text-align:left;max-width:22em}img{height:128px;border:4px solid}"
        ".ok{border-color:#00aa00}.bad{border-color:#d20000}.tgt{border-color:#3c3cc8}"
        ".sep{width:16px}")


def result_html(rows: Sequence[GridRow], out_path: str | Path, *,
                title: str = "Retrieval results") -> Path:
    """Write a self-contained HTML page (images embedded as base64 JPEG) and return its path."""
    _check_files(rows)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><table>"]
    for row in rows:
        cells = [f"<td class='q'>{html.escape(row.query)}</td>"]
        if row.target is not None:
            cells.append(f"<td><img class='tgt' src='{image_data_uri(row.target)}' alt='target'>"
                         f"<br>target</td><td class='sep'></td>")
        for k, (path, ok) in enumerate(zip(row.images, row.correct)):
            score = f"<br>{row.scores[k]:.3f}" if row.scores is not None else ""
            cells.append(f"<td><img class='{'ok' if ok else 'bad'}' src='{image_data_uri(path)}' "
                         f"alt='{html.escape(path.name)}' title='{html.escape(str(path))}'>"
                         f"<br>#{k + 1}{score}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
