"""Gallery indexes: encode images and video people once, then search them by description."""
from __future__ import annotations

from ivt.errors import IndexStoreError
from ivt.index.backends import BACKENDS
from ivt.index.gallery import Gallery, Hit, TrackSpan
from ivt.index.store import Item, VideoRef, read_index

__all__ = ["BACKENDS", "Gallery", "Hit", "IndexStoreError", "Item", "TrackSpan", "VideoRef", "read_index"]
