"""Dataset records, annotation readers and dataset checks."""
from __future__ import annotations

from ivt.data.readers import FORMATS, load_dataset
from ivt.data.records import SPLITS, DataError, PedesDataset, Record
from ivt.data.validate import check_images, format_stats, split_stats

__all__ = [
    "FORMATS",
    "SPLITS",
    "DataError",
    "PedesDataset",
    "Record",
    "check_images",
    "format_stats",
    "load_dataset",
    "split_stats",
]
