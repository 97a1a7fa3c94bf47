"""A contact sheet of dataset images with their captions, for a person to eyeball."""
from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ivt.errors import ConfigError, DataError, ImageError

_TEXT_W, _PAD, _ZOOM, _WRAP = 340, 10, 2, 50


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _pick(rows: list[dict], attrs: dict, n: int, rng: random.Random) -> list[dict]:
    """About half hard-negative pairs (a derived identity next to its base), the rest random."""
    by_id: dict[int, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    derived = [int(k) for k, v in attrs.items() if v.get("derived_from")]
    rng.shuffle(derived)
    chosen: list[dict] = []
    for pid in derived:
        if len(chosen) + 2 > n // 2:
            break
        base = attrs[str(pid)]["derived_from"]
        if base in by_id and pid in by_id:
            chosen += [rng.choice(by_id[base]), rng.choice(by_id[pid])]
    rest = [r for r in rows if r not in chosen]
    chosen += rng.sample(rest, min(len(rest), n - len(chosen)))
    return chosen[:n]


def check_preview_target(png_path: str | Path, num_images: int) -> Path:
    """The preview's path once checked, so the CLI can refuse a bad ``--preview`` before generating."""
    out = Path(png_path)
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ConfigError(f"preview count (--preview-count) must be an integer >= 1, got {num_images!r}")
    if out.is_dir():
        raise ConfigError(f"preview {out} is a directory; give the PNG file to write, e.g. {out / 'preview.png'}")
    return out


def write_preview(dataset_dir: str | Path, png_path: str | Path, num_images: int = 12, seed: int = 0) -> Path:
    """Write a PNG contact sheet of ``num_images`` images with id, view, captions and attribute phrases."""
    out = check_preview_target(png_path, num_images)
    root = Path(dataset_dir)
    ann = root / "reid_raw.json"
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset directory, nothing to preview")
    if not ann.is_file():
        raise DataError(f"{root} has no reid_raw.json; is it a SynthPedes/CUHK-PEDES directory?")
    try:
        rows = json.loads(ann.read_text(encoding="utf-8"))
        attrs_file = root / "attributes.json"
        attrs = json.loads(attrs_file.read_text(encoding="utf-8")) if attrs_file.is_file() else {}
    except (OSError, ValueError) as exc:
        raise DataError(f"{root}: cannot read its annotation for a preview ({exc})") from None
    if not isinstance(rows, list) or not rows or not isinstance(attrs, dict):
        raise DataError(f"{ann}: no entries to preview (expected a non-empty JSON array)")
    views = {m["file_path"]: m for rec in attrs.values() for m in rec.get("images", [])}
    picked = _pick(rows, attrs, num_images, random.Random(seed))
    thumbs = [_thumb(root / "imgs" / r["file_path"]) for r in picked]
    tw, th = max(t.width for t in thumbs) * _ZOOM, max(t.height for t in thumbs) * _ZOOM
    cols = min(4, len(picked))
    rows_n = (len(picked) + cols - 1) // cols
    cell_w, cell_h = tw + _TEXT_W + 3 * _PAD, th + 2 * _PAD
    sheet = Image.new("RGB", (cols * cell_w, rows_n * cell_h), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    font, bold = _font(13), _font(14)
    for i, (r, t) in enumerate(zip(picked, thumbs)):
        x, y = (i % cols) * cell_w + _PAD, (i // cols) * cell_h + _PAD
        sheet.paste(t.resize((t.width * _ZOOM, t.height * _ZOOM), Image.Resampling.NEAREST), (x, y))
        meta = views.get(r["file_path"], {})
        rec = attrs.get(str(r["id"]), {})
        head = f"id {r['id']} ({r['split']})  view: {meta.get('view', '?')}"
        if meta.get("occluder"):
            head += f"  occluder: {meta['occluder']}"
        lines = [head]
        if rec.get("derived_from"):
            lines.append(f"hard negative of id {rec['derived_from']}: {', '.join(rec['changed'])}")
        for k, c in enumerate(r["captions"]):
            lines.append("")
            lines += textwrap.wrap(f"{k + 1}. {c}", _WRAP)
        lines.append("")
        lines += textwrap.wrap("att: " + "; ".join(r.get("att", [])), _WRAP)
        ty = y
        for k, line in enumerate(lines):
            draw.text((x + tw + _PAD, ty), line, fill=(20, 20, 20) if k else (120, 30, 30),
                      font=bold if k == 0 else font)
            ty += 17
        draw.line((x - _PAD, y + cell_h - _PAD, x + cell_w, y + cell_h - _PAD), fill=(200, 200, 200))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out, "PNG")
    except OSError as exc:
        raise ConfigError(f"preview {out}: cannot write it ({exc.strerror or exc})") from None
    return out


def _thumb(path: Path) -> Image.Image:
    """An image of the sheet, decoded now so a missing or broken file is named, not a traceback."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:
        raise ImageError(f"{path}: cannot read this image for the preview ({exc})") from None
