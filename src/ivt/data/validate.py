"""Check that a dataset's images exist and decode, and summarise a dataset split by split.

Nothing here writes anything: images are only opened for reading.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ivt.data.problems import Problems
from ivt.data.records import PedesDataset, Record
from ivt.terminal import printable

#: Threads decoding images in :func:`check_images` (decoding releases the GIL).
CHECK_WORKERS = 3


def _image_problem(path: Path) -> str | None:
    """Why the image at ``path`` cannot be used, or None when it decodes.

    JPEGs are decoded in draft mode (DCT-scaled to about 1/8 size), which still reads every byte of
    the entropy-coded data, so truncated files are caught at a fraction of the full decoding cost.
    """
    if not path.exists():
        return f"missing file {path}"
    if not path.is_file():
        return f"not a file: {path}"
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as err:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        return f"cannot decode {path}: {type(err).__name__}: {err}"
    return None


def _describe_record(record: Record) -> str:
    """How a record is named in problem reports."""
    return f"image {record.image!r} ({record.split}, id {record.raw_pid})"


def check_images(dataset: PedesDataset, *, progress: bool = False) -> None:
    """Check that every record's image exists and decodes fully (catches truncated/corrupt files).

    Raises :class:`~ivt.data.records.DataError` listing the problems, each naming the image file and
    the record (image path as written in the annotation, split and raw id).
    """
    records = dataset.records
    paths = [dataset.image_path(r) for r in records]
    with ThreadPoolExecutor(max_workers=CHECK_WORKERS) as pool:
        results = tqdm(pool.map(_image_problem, paths), total=len(paths), disable=not progress,
                       desc="checking images", unit="img")
        found = list(results)
    problems = Problems(str(dataset.image_root))
    for record, problem in zip(records, found):
        if problem is not None:
            problems.add(_describe_record(record), problem)
    checked = f"{len(records)} image{'s' if len(records) != 1 else ''} checked"
    problems.raise_if_any(f"with the images of {dataset.annotation} ({checked})")


def split_stats(dataset: PedesDataset) -> list[dict]:
    """Per split present (canonical order): a dict with ``split``, ``ids``, ``images``,
    ``captions``, ``captions_per_image``, ``mean_caption_words`` and ``images_with_attributes``."""
    return [_stats(name, dataset.split(name)) for name in dataset.splits]


def _stats(name: str, records: list[Record]) -> dict:
    """The statistics of one group of records (a split, or all of them)."""
    captions = [c for r in records for c in r.captions]
    words = sum(len(c.split()) for c in captions)
    return {
        "split": name,
        "ids": len({r.pid for r in records}),
        "images": len(records),
        "captions": len(captions),
        "captions_per_image": len(captions) / len(records) if records else 0.0,
        "mean_caption_words": words / len(captions) if captions else 0.0,
        "images_with_attributes": sum(1 for r in records if r.attributes),
    }


_COLUMNS = (
    ("split", "split", "{}"),  # a name from the annotation: escaped by format_stats
    ("ids", "ids", "{:,}"),
    ("images", "images", "{:,}"),
    ("captions", "captions", "{:,}"),
    ("captions_per_image", "captions/image", "{:.2f}"),
    ("mean_caption_words", "words/caption", "{:.1f}"),
    ("images_with_attributes", "with attributes", "{:,}"),
)


def format_stats(dataset: PedesDataset) -> str:
    """A readable aligned table of :func:`split_stats` with a total row, under a header line
    naming the format and the annotation file (names with control characters escaped).

    The total's ids are the sum over splits (the standard splits have disjoint identities).
    """
    rows = split_stats(dataset)
    if rows:
        total = _stats("total", dataset.records)
        total["ids"] = sum(row["ids"] for row in rows)
        rows.append(total)
    cells = [[title for _, title, _ in _COLUMNS]]
    cells += [[printable(fmt.format(row[key])) for key, _, fmt in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]

    def line(values: list[str]) -> str:
        """One table row: the first column left-aligned, numbers right-aligned."""
        first = values[0].ljust(widths[0])
        return "  ".join([first] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])]).rstrip()

    out = [f"{dataset.format}: {printable(dataset.annotation)} (images under {printable(dataset.image_root)})",
           line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(values) for values in cells[1:]]
    if len(rows) > 1:
        out.insert(len(out) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
