"""The one record type every dataset reader produces, and the dataset container."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ivt.errors import DataError

__all__ = ["SPLITS", "DataError", "Record", "PedesDataset"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image with its captions.

    ``pid`` is the label used by training and evaluation: train ids are relabelled to 0..K-1
    (the mapping is kept in :attr:`PedesDataset.train_pid_map`), val/test ids stay as given.
    ``image`` is relative to the dataset's image root. ``attributes`` are short attribute phrases
    ("red backpack") for word-level alignment; empty when the annotation has none. Formats with
    one entry per caption (the official IVT files) give each caption its own phrases:
    ``caption_attributes[i]`` belongs to ``captions[i]`` and ``attributes`` is their union.
    """

    image: str
    pid: int
    raw_pid: int
    captions: tuple[str, ...]
    split: str
    attributes: tuple[str, ...] = ()
    caption_attributes: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.caption_attributes and len(self.caption_attributes) != len(self.captions):
            raise ValueError(f"{self.image}: {len(self.caption_attributes)} attribute lists for "
                             f"{len(self.captions)} captions")

    def attributes_of(self, index: int) -> tuple[str, ...]:
        """The attribute phrases of caption ``index``: its own, or the image's when captions have none."""
        return self.caption_attributes[index] if self.caption_attributes else self.attributes


@dataclass
class PedesDataset:
    """All records of one annotation file, with where their images live."""

    format: str
    annotation: Path
    image_root: Path
    records: list[Record]
    train_pid_map: dict[int, int] = field(default_factory=dict)

    def split(self, name: str) -> list[Record]:
        """Records of one split, in file order."""
        return [r for r in self.records if r.split == name]

    @property
    def splits(self) -> list[str]:
        """Split names present, in canonical order."""
        present = {r.split for r in self.records}
        return [s for s in SPLITS if s in present]

    def image_path(self, record: Record) -> Path:
        """Absolute path of a record's image."""
        return self.image_root / record.image

    def describe_entry(self, record: Record) -> str:
        """Where a record comes from, for error messages: the annotation file and the entry."""
        return f"{self.annotation}, {record.split} entry '{record.image}' (id {record.raw_pid})"
