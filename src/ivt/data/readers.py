"""Read text-based person retrieval annotations into a :class:`~ivt.data.records.PedesDataset`.

Accepted formats (``FORMATS``), detected from the file name and, failing that, from the JSON shape:

========== ============================ =================================================
format     file name                    shape
========== ============================ =================================================
cuhk-pedes ``reid_raw.json``,           list, one entry per image: ``split``, ``captions``
           ``CUHK-PEDES.json``          (list), ``file_path``, ``id``; optional ``att``
icfg-pedes ``ICFG-PEDES.json``,         as cuhk-pedes, splits train/test only, one caption
           ``ICFG_PEDES.json``          per image
rstpreid   ``data_captions.json``       as cuhk-pedes with ``img_path`` for ``file_path``
ivt-cuhk   ``cuhk_pedes_att.json``      dict split -> list, ONE ENTRY PER CAPTION:
                                        ``id``, ``file_path``, ``captions`` (a string),
                                        ``att`` (dict key -> phrase, or list)
ivt-icfg   ``ICFG_PEDES_VISTXT.json``   dict train/test/query/gallery -> list, one entry
                                        per image; query/gallery (copies of test) ignored
ivt-rstp   ``rstpreid_vistxt.json``     dict split -> list, one entry per caption:
                                        ``id``, ``img_path``, ``captions`` (a string)
jsonl      ``*.jsonl``                  our format for user data, below
========== ============================ =================================================

Entries of the per-caption formats are grouped by image into one record holding all its captions in
file order; each caption keeps its own ``att`` phrases (``Record.caption_attributes``, what the
official loaders use for word-level alignment) and ``Record.attributes`` is their union
(first-seen order, no duplicates). In the per-image formats an image listed twice is an error.

JSONL, the format for your own data: UTF-8, one JSON object per line, one line per image; blank
lines are allowed::

    {"image": "cam1/0001_01.jpg", "id": 12, "split": "train",
     "captions": ["A man in a red jacket.", "He carries a black bag."],
     "attributes": ["red jacket", "black bag"]}
    {"image": "cam2/0040_03.jpg", "id": 40, "split": "test", "caption": "A woman in a white dress."}

- ``image`` (string): path relative to the image root (default ``<annotation directory>/imgs``).
- ``id`` (integer >= 0): the person id; images of the same person share it.
- ``split``: ``"train"``, ``"val"`` or ``"test"``.
- ``captions`` (non-empty list of strings) or ``caption`` (one string): one of the two.
- ``attributes`` (optional list of strings): short attribute phrases for word-level alignment.

Train ids are relabelled to 0..K-1 in the order of the sorted raw train ids (as the official IVT
code does; the mapping is kept in ``PedesDataset.train_pid_map``); val/test ids are kept as given.
Captions are stripped of surrounding white space and otherwise kept as given. Problems are collected
and reported together in one :class:`~ivt.data.records.DataError` naming the file, the entry
(``entry [i]`` for lists, ``entry train[i]`` for split dicts, ``line n`` for JSONL, with the image
path where known) and the field. Loading never writes anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ivt.data.entries import Entry, Spec, json_kind, parse_entry
from ivt.data.problems import Problems
from ivt.data.records import SPLITS, DataError, PedesDataset, Record
from ivt.files import ConfinedRoot, parse_json

FORMATS = ("cuhk-pedes", "icfg-pedes", "rstpreid", "ivt-cuhk", "ivt-icfg", "ivt-rstp", "jsonl")
#: How a caller names the format: the hints of the errors say it for the command line and for Python.
FORMAT_OPTION = "--format FORMAT on the command line, format='FORMAT' in Python"

#: Known annotation file names (lower case) and their format.
FILE_NAMES = {
    "reid_raw.json": "cuhk-pedes",
    "cuhk-pedes.json": "cuhk-pedes",
    "icfg-pedes.json": "icfg-pedes",
    "icfg_pedes.json": "icfg-pedes",
    "data_captions.json": "rstpreid",
    "cuhk_pedes_att.json": "ivt-cuhk",
    "icfg_pedes_vistxt.json": "ivt-icfg",
    "rstpreid_vistxt.json": "ivt-rstp",
}

_SPECS = {
    "cuhk-pedes": Spec("list", "file_path", per_caption=False),
    "icfg-pedes": Spec("list", "file_path", per_caption=False, splits=("train", "test")),
    "rstpreid": Spec("list", "img_path", per_caption=False),
    "ivt-cuhk": Spec("splits", "file_path", per_caption=True),
    "ivt-icfg": Spec("splits", "file_path", per_caption=False, splits=("train", "test"),
                     ignored_splits=("query", "gallery")),
    "ivt-rstp": Spec("splits", "img_path", per_caption=True),
    "jsonl": Spec("lines", "image", per_caption=False, attr_key="attributes"),
}


def _accepted() -> str:
    """The accepted formats and file names, for error messages."""
    names = sorted(FILE_NAMES)
    return (f"accepted formats: {', '.join(FORMATS)}; accepted file names: {', '.join(names)} "
            "(any case) or *.jsonl")


def load_dataset(path: str | Path, format: str = "auto",
                 image_root: str | Path | None = None) -> PedesDataset:
    """Load an annotation file (or the dataset directory holding it) into a :class:`PedesDataset`.

    ``format`` is one of :data:`FORMATS` or ``"auto"``. ``image_root`` defaults to ``imgs/`` next to
    the annotation file. Raises :class:`DataError` for unreadable, ambiguous or invalid input.
    """
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown format {format!r}; {_accepted()}")
    path = Path(path).absolute()
    if path.is_dir():
        path = _find_annotation(path, format)
    elif not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    named = False
    if format == "auto":
        by_suffix = "jsonl" if path.suffix.lower() == ".jsonl" else ""
        format = FILE_NAMES.get(path.name.lower(), by_suffix)
        named = bool(format)
    data: Any = None
    text = _read_text(path)
    if format != "jsonl":
        try:
            data = _loads(text, str(path))
        except json.JSONDecodeError as err:
            if not format and err.msg == "Extra data" and _looks_like_jsonl(text):
                format = "jsonl"
            else:
                raise DataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: "
                                f"{err.msg}") from None
    if not format:
        format = _detect_shape(data)
        if not format:
            raise DataError(f"{path}: cannot tell the annotation format from the file name or the "
                            f"JSON shape; give the format ({FORMAT_OPTION}); {_accepted()}")
    spec = _SPECS[format]
    problems = Problems(str(path))
    if spec.container == "lines":
        entries = _read_lines(text, spec, problems)
    else:
        hint = ""
        if named:
            hint = (f" (format {format} was chosen from the file name; give the format ({FORMAT_OPTION}) if "
                    "the file is in another format)")
        entries = _read_json(data, spec, problems, str(path), hint)
    root = Path(image_root) if image_root is not None else path.parent / "imgs"
    _check_inside_root(entries, spec, root, problems)
    records, pid_map = _build(entries, spec, problems)
    problems.raise_if_any(f"in the {format} annotation")
    if not records:
        raise DataError(f"{path}: the {format} annotation has no entries")
    return PedesDataset(format=format, annotation=path, image_root=root, records=records,
                        train_pid_map=pid_map)


def _find_annotation(directory: Path, format: str) -> Path:
    """The one annotation file (of ``format``, unless auto) directly inside ``directory``."""
    found = []
    for child in sorted(directory.iterdir()):
        if not child.is_file():
            continue
        fmt = "jsonl" if child.suffix.lower() == ".jsonl" else FILE_NAMES.get(child.name.lower())
        if fmt and (format == "auto" or fmt == format):
            found.append(child)
    if len(found) == 1:
        return found[0]
    wanted = "" if format == "auto" else f" for format {format}"
    if not found:
        raise DataError(f"{directory}: no annotation file{wanted} found in this directory; "
                        f"{_accepted()}")
    raise DataError(f"{directory}: several annotation files{wanted} found "
                    f"({', '.join(p.name for p in found)}); pass the file itself")


def _loads(text: str, where: str) -> Any:
    """The JSON value of ``text``: bad syntax raises :class:`json.JSONDecodeError` (its line and column
    worded by the caller); JSON nested too deeply to decode is the DataError of the shared rule
    (:func:`ivt.files.parse_json`) naming ``where``, never a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        return parse_json(text, where, DataError)


def image_format(path: str | Path) -> str | None:
    """The image format of the file ``path`` (``JPEG``, ``PNG`` ...) from its header alone (Pillow
    reads the first kilobytes), or None when it is no image Pillow knows."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.format or "image"
    except Image.DecompressionBombError:
        return "image"
    except (OSError, ValueError, SyntaxError):
        return None


def _read_text(path: Path) -> str:
    """The file's UTF-8 text (a leading byte-order mark is dropped); an image file is named as one."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        kind = image_format(path)
        if kind is not None:
            raise DataError(f"{path}: this is an image file ({kind}), not an annotation file; give the dataset's "
                            f"annotation file or its directory ({_accepted()})") from None
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None


def _looks_like_jsonl(text: str) -> bool:
    """Whether the first non-blank line is a JSON object carrying an ``image`` key."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        obj = _loads(first, "the first line")
    except (json.JSONDecodeError, DataError):
        return False
    return isinstance(obj, dict) and "image" in obj


def _detect_shape(data: Any) -> str:
    """The format implied by parsed JSON, or "" when the shape matches none (or several)."""
    if isinstance(data, list):
        first = next((e for e in data if isinstance(e, dict)), None)
        if first is None:
            return ""
        if "img_path" in first:
            return "rstpreid"
        if "file_path" not in first:
            return ""
        cuhk_like = any(isinstance(e, dict) and (e.get("split") == "val" or "att" in e or (
            isinstance(e.get("captions"), list) and len(e["captions"]) != 1)) for e in data)
        return "cuhk-pedes" if cuhk_like else "icfg-pedes"
    if isinstance(data, dict) and data and set(data) <= {*SPLITS, "query", "gallery"}:
        if {"query", "gallery"} & set(data):
            return "ivt-icfg"
        lists = [v for v in data.values() if isinstance(v, list)]
        first = next((e for v in lists for e in v if isinstance(e, dict)), None)
        if first is None:
            return ""
        captions = first.get("captions")
        if isinstance(captions, str):
            return {"img_path": "ivt-rstp", "file_path": "ivt-cuhk"}.get(
                next((k for k in ("img_path", "file_path") if k in first), ""), "")
        if isinstance(captions, list) and "file_path" in first and "val" not in data:
            return "ivt-icfg"
    return ""


def _read_json(data: Any, spec: Spec, problems: Problems, source: str, hint: str) -> list[Entry]:
    """Parse the entries of a JSON list or split dict; top-level shape errors raise at once."""
    entries: list[Entry] = []
    if spec.container == "list":
        if not isinstance(data, list):
            raise DataError(f"{source}: the top level must be a JSON array of entries, "
                            f"got {json_kind(data)}{hint}")
        for i, obj in enumerate(data):
            entry = parse_entry(obj, spec, f"entry [{i}]", None, problems)
            if entry is not None:
                entries.append(entry)
        return entries
    if not isinstance(data, dict):
        raise DataError(f"{source}: the top level must be a JSON object keyed by split "
                        f"({', '.join(spec.splits)}), got {json_kind(data)}{hint}")
    for split, items in data.items():
        if split in spec.ignored_splits:
            continue
        if split not in spec.splits:
            allowed = ", ".join(spec.splits + spec.ignored_splits)
            problems.add(f"key {split!r}", f"unknown split {split!r} (allowed: {allowed})")
            continue
        if not isinstance(items, list):
            problems.add(f"key {split!r}", f"expected an array of entries, got {json_kind(items)}")
            continue
        for i, obj in enumerate(items):
            entry = parse_entry(obj, spec, f"entry {split}[{i}]", split, problems)
            if entry is not None:
                entries.append(entry)
    return entries


def _read_lines(text: str, spec: Spec, problems: Problems) -> list[Entry]:
    """Parse JSONL text, one object per non-blank line."""
    entries: list[Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = _loads(line, f"{problems.source} line {number}")
        except json.JSONDecodeError as err:
            problems.add(f"line {number}", f"malformed JSON at column {err.colno}: {err.msg}")
            continue
        entry = parse_entry(obj, spec, f"line {number}", None, problems)
        if entry is not None:
            entries.append(entry)
    return entries


def _check_inside_root(entries: list[Entry], spec: Spec, root: Path, problems: Problems) -> None:
    """Every image must lie under the image root: training, evaluation and the indexes built from
    a dataset read (and serve) only files there, judged by the one rule of ``ConfinedRoot``."""
    confined = ConfinedRoot(root)
    seen: set[str] = set()
    for entry in entries:
        if entry.image in seen:
            continue
        seen.add(entry.image)
        problem = confined.problem(entry.image)
        if problem is not None:
            problems.add(entry.where, f"field {spec.image_key!r}: {entry.image!r} must be relative to the image root "
                                      f"{confined.base} and stay inside it ({problem})")


def _build(entries: list[Entry], spec: Spec,
           problems: Problems) -> tuple[list[Record], dict[int, int]]:
    """Group entries by image, check duplicates, relabel train ids."""
    groups: dict[str, Entry] = {}
    for entry in entries:
        first = groups.get(entry.image)
        if first is None:
            groups[entry.image] = Entry(entry.where, entry.split, entry.image, entry.pid,
                                         list(entry.captions), list(entry.attributes),
                                         list(entry.caption_attributes))
        elif first.pid != entry.pid:
            problems.add(entry.where, f"image listed twice with conflicting ids: field 'id' is "
                                      f"{entry.pid} here and {first.pid} at {first.where}")
        elif first.split != entry.split:
            problems.add(entry.where, f"image listed twice in different splits: field 'split' is "
                                      f"{entry.split!r} here and {first.split!r} at {first.where}")
        elif not spec.per_caption:
            problems.add(entry.where, f"image listed twice (also at {first.where}); give all its "
                                      "captions in one entry")
        else:
            first.captions.extend(entry.captions)
            first.caption_attributes.extend(entry.caption_attributes)
            first.attributes.extend(a for a in entry.attributes if a not in first.attributes)
    train_ids = sorted({g.pid for g in groups.values() if g.split == "train"})
    pid_map = {raw: label for label, raw in enumerate(train_ids)}
    records = [Record(image=g.image, pid=pid_map[g.pid] if g.split == "train" else g.pid,
                      raw_pid=g.pid, captions=tuple(g.captions), split=g.split,
                      attributes=tuple(g.attributes), caption_attributes=tuple(g.caption_attributes))
               for g in groups.values()]
    return records, pid_map
