"""An opened index ready to answer text queries: search (per item or per track), item provenance,
verified image bytes, and the check that a model is the one the index was built with."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ivt.errors import DataError, IndexStoreError
from ivt.files import ConfinedRoot
from ivt.index.backends import SEARCH_PARAMS, SearchBackend, check_params, load_backend
from ivt.index.clock import iso_to_seconds, seconds_to_iso
from ivt.index.filters import ItemColumns, SearchFilter, camera_of
from ivt.index.same_person import NO_CAMERA, CameraMeans
from ivt.index.store import (
    Item,
    StoredIndex,
    VideoRef,
    read_index,
    sha256_bytes,
)


@dataclass(frozen=True)
class TrackSpan:
    """A person track of a video: its items (in time order) and the time range they cover."""

    track: int
    source: int | str
    items: tuple[int | str, ...]
    start: float
    end: float
    first_frame: int
    last_frame: int


@dataclass(frozen=True)
class Hit:
    """One search result: item ``id`` (row of ivt's own index; the content's sha256 in Milvus)
    and its cosine ``score``; with ``per_track`` search, the best crop of a track and the track."""

    id: int | str
    score: float
    track: TrackSpan | None = None


class Gallery:
    """A verified index in memory. Searching is thread-safe (nothing is mutated after opening)."""

    def __init__(self, stored: StoredIndex, backend: SearchBackend) -> None:
        self.stored = stored
        self.backend = backend
        self.tracks = _tracks(stored.items)
        self._track_of = {i: span for span in self.tracks.values() for i in span.items}
        self.columns = ItemColumns.of(stored.items, stored.manifest["sources"])
        self._by_sha256: dict[str, int] | None = None       # made on first use (a benign race)
        self._camera_means: CameraMeans | None = None        # likewise

    @classmethod
    def open(cls, index_dir: str | Path, search_params: Mapping[str, int] | None = None) -> Gallery:
        """Open and verify an index; ``search_params`` override ef_search / nprobe / rerank."""
        stored = read_index(index_dir)
        backend_info = stored.manifest["backend"]
        params = dict(backend_info.get("params", {}))
        for key, value in (search_params or {}).items():
            if key not in SEARCH_PARAMS or key not in params:
                raise IndexStoreError(f"backend {backend_info['name']} has no search parameter {key!r}")
            params[key] = int(value)
        check_params(backend_info["name"], params, len(stored), search_params or ())
        try:
            backend = load_backend(backend_info["name"], params, stored.embeddings, stored.ann_path)
        except (RuntimeError, ValueError) as exc:
            raise IndexStoreError(f"index {stored.directory}: cannot load its {backend_info['name']} "
                                  f"search structure ({exc}); the index was not modified") from exc
        return cls(stored, backend)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.stored.manifest

    @property
    def items(self) -> list[Item]:
        return self.stored.items

    @property
    def directory(self) -> Path:
        return self.stored.directory

    def __len__(self) -> int:
        return len(self.stored.items)

    def check_model(self, fingerprint: str, tokenizer_fingerprint: str, source: str = "the model",
                    preprocessing: Mapping[str, Any] | None = None) -> None:
        """Refuse a model, tokenizer or image preprocessing other than the one the embeddings were
        made with."""
        check_compatible(self.manifest, fingerprint, tokenizer_fingerprint, source, self.directory, preprocessing)

    # -- search ---------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int = 10, per_track: bool = False,
               where: SearchFilter | None = None) -> list[Hit]:
        """The best ``k`` items for one L2-normalised query vector (D,).

        ``per_track``: one hit per video track (its best crop; images outside videos count as
        their own track), so a person who stays in view for many frames fills one slot, not k.
        ``where``: only items that pass the filter (:mod:`ivt.index.filters`); ranked exactly
        among those, so k results come back whenever k items pass.
        """
        if k <= 0 or not len(self):
            return []
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if where is not None and where.restricts_items:
            hits = self._search_subset(q[0], where.mask(self.columns), k, per_track)
        else:
            hits = self._search_all(q, k, per_track)
        if where is not None and where.min_score is not None:
            hits = [h for h in hits if h.score >= where.min_score]
        return hits

    def _search_subset(self, q: np.ndarray, mask: np.ndarray, k: int, per_track: bool) -> list[Hit]:
        """Exact ranking of the items of ``mask`` (their stored float32 embeddings)."""
        ids = np.flatnonzero(mask)
        scores = self.stored.embeddings[ids] @ q
        hits: list[Hit] = []
        seen: set[Any] = set()
        for j in np.argsort(-scores, kind="stable"):
            item = int(ids[j])
            span = self._track_of.get(item) if per_track else None
            key = ("track", span.track) if span is not None else ("item", item)
            if key in seen:
                continue
            seen.add(key)
            hits.append(Hit(item, float(scores[j]), span))
            if len(hits) == k:
                break
        return hits

    def _search_all(self, q: np.ndarray, k: int, per_track: bool) -> list[Hit]:
        if not per_track:
            scores, ids = self.backend.search(q, k)
            return [Hit(int(i), float(s)) for s, i in zip(scores[0], ids[0])]
        wanted = min(len(self), max(8 * k, 64))
        while True:
            scores, ids = self.backend.search(q, wanted)
            hits: list[Hit] = []
            seen: set[Any] = set()
            for s, i in zip(scores[0], ids[0]):
                span = self._track_of.get(int(i))
                key = ("track", span.track) if span is not None else ("item", int(i))
                if key not in seen:
                    seen.add(key)
                    hits.append(Hit(int(i), float(s), span))
                    if len(hits) == k:
                        return hits
            if wanted >= len(self):
                return hits
            wanted = min(len(self), wanted * 4)

    # -- items ----------------------------------------------------------------------------------

    def item_file(self, item_id: int) -> Path:
        """The file of an indexed item, resolved and confined to its root (no request input is
        ever part of the path: only the index's own records)."""
        item = self._item(item_id)
        return confined_file(item_id, self.directory if item.root is None else Path(self.manifest["roots"][item.root]),
                             item.path)

    def read_image(self, item_id: int) -> bytes:
        """The bytes of an indexed image, only if they still have the indexed sha256."""
        return read_verified(item_id, self.item_file(item_id), self._item(item_id).sha256)

    def describe(self, item_id: int, track: TrackSpan | None = None) -> dict[str, Any]:
        """JSON-ready provenance of an item (:func:`describe_item`)."""
        item = self._item(item_id)
        source = self.manifest["sources"][item.video.source] if item.video is not None else None
        span = track or (self.tracks.get(item.video.track) if item.video is not None else None)
        return describe_item(item, source, span)

    def item_path(self, item_id: int) -> str:
        """The indexed file's path as recorded (relative to its root)."""
        return self._item(item_id).path

    def vectors(self, item_ids: Sequence[int]) -> tuple[np.ndarray, list[str]]:
        """The stored unit embeddings (N, D) of items and their cameras (``NO_CAMERA`` for images)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexStoreError(f"no item {int(ids[(ids < 0) | (ids >= len(self))][0])} in this index "
                                  f"({len(self)} items)")
        cols = self.columns
        cameras = [cols.cameras[c] if c >= 0 else NO_CAMERA for c in cols.camera[ids].tolist()]
        return np.asarray(self.stored.embeddings[ids], dtype=np.float32), cameras

    def camera_means(self) -> CameraMeans:
        """The mean embedding of each camera's items and of all (made on first use)."""
        if self._camera_means is None:
            cols = self.columns
            codes = np.where(cols.camera >= 0, cols.camera, len(cols.cameras))
            self._camera_means = CameraMeans.of_codes(self.stored.embeddings, codes, [*cols.cameras, NO_CAMERA])
        return self._camera_means

    def item_with_sha256(self, sha256: str) -> int | None:
        """The item whose content has this sha256, if the index holds it."""
        if self._by_sha256 is None:
            self._by_sha256 = {item.sha256: i for i, item in enumerate(self.stored.items)}
        return self._by_sha256.get(sha256)

    def prefetch(self, item_ids: Sequence[int]) -> None:
        """Nothing to do: every item's record is in memory (Milvus's gallery reads them in one call)."""

    def track_of(self, item_id: int) -> TrackSpan | None:
        """The video track the item belongs to (None for an image outside videos)."""
        self._item(item_id)
        return self._track_of.get(int(item_id))

    def track_number(self, item_id: int) -> int | None:
        """The number of the item's video track (None for an image outside videos)."""
        span = self.track_of(item_id)
        return None if span is None else span.track

    def video_of(self, item_id: int) -> tuple[dict[str, Any], VideoRef] | None:
        """The video record an item was cropped from and where in it (None for other images)."""
        item = self._item(item_id)
        return None if item.video is None else (self.manifest["sources"][item.video.source], item.video)

    def track_count(self) -> int:
        """How many video tracks the index holds."""
        return len(self.tracks)

    def parse_id(self, raw: str) -> int | None:
        """The item id a request names (decimal digits of an existing item), or None."""
        if raw.isascii() and raw.isdigit() and len(raw) <= 12 and int(raw) < len(self):
            return int(raw)
        return None

    def _item(self, item_id: int) -> Item:
        if not isinstance(item_id, (int, np.integer)) or not 0 <= int(item_id) < len(self):
            raise IndexStoreError(f"no item {item_id!r} in this index ({len(self)} items)")
        return self.stored.items[int(item_id)]


#: The fewest hex digits an item id may be shortened to (as git abbreviates object names); the
#: results table shows 12.
MIN_ID_PREFIX = 4
_HEX_PREFIX = re.compile(r"[0-9a-f]{1,64}")


def id_prefix(raw: str) -> str | None:
    """A content id (a sha256 in hex) or a prefix of one as a request gives it: at least
    :data:`MIN_ID_PREFIX` hex digits in either case, returned lower-cased; None for anything else."""
    text = raw.lower() if isinstance(raw, str) else ""
    return text if len(text) >= MIN_ID_PREFIX and _HEX_PREFIX.fullmatch(text) else None


def unique_id(raw: str, matches: Sequence[str]) -> str | None:
    """The one id that begins with prefix ``raw`` among ``matches`` (None when there is none);
    DataError when several do, listing them as the results table shows ids."""
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:2])
        raise DataError(f"item id {raw[:70]!r} is ambiguous: the ids of several items begin with it ({shown}, ...); "
                        f"give more of its digits")
    return matches[0] if matches else None


def confined_file(item_id: int | str, root: Path, relative: str) -> Path:
    """An item's file: ``relative`` under ``root``, links followed, refused if it leads outside."""
    confined = ConfinedRoot(root)
    path = confined.resolve(relative)
    if path is None:
        raise IndexStoreError(f"item {item_id}: {relative} leads outside its root {confined.base}")
    return path


def read_verified(item_id: int | str, path: Path, sha256: str) -> bytes:
    """The bytes of an item's file, only if they still hash to the indexed ``sha256``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IndexStoreError(f"item {item_id}: cannot read {path} ({exc.strerror or exc})") from exc
    if sha256_bytes(data) != sha256:
        raise IndexStoreError(f"item {item_id}: {path} has changed since it was indexed")
    return data


def describe_item(item: Item, source: Mapping[str, Any] | None, span: TrackSpan | None) -> dict[str, Any]:
    """JSON-ready provenance of an item: file, person id, size, and for video crops (``source`` its
    video's record) the video, camera, frame, time (and wall-clock time), box and track (with its
    time range when ``span`` is known)."""
    info: dict[str, Any] = {"path": item.path, "width": item.width, "height": item.height}
    if item.pid is not None:
        info["pid"] = item.pid
    if item.video is not None and source is not None:
        ref = item.video
        info.update(video=source.get("name") or Path(source.get("path", "")).name, frame=ref.frame,
                    time=round(ref.time, 3), box=list(ref.box), track=ref.track, camera=camera_of(source))
        if source.get("start_time") is not None:
            # Start times were checked with their items' times (ivt's store when it opened the index).
            info["wall_time"] = seconds_to_iso(iso_to_seconds(source["start_time"]) + ref.time)
        if span is not None:
            info.update(track_start=round(span.start, 3), track_end=round(span.end, 3),
                        track_items=len(span.items), first_frame=span.first_frame, last_frame=span.last_frame)
    return info


def check_compatible(manifest: Mapping[str, Any], fingerprint: str, tokenizer_fingerprint: str,
                     source: str, index_dir: Path, preprocessing: Mapping[str, Any] | None = None) -> None:
    """IndexStoreError when ``fingerprint`` / ``tokenizer_fingerprint`` / ``preprocessing`` are not
    the index's (indexes built before the manifest recorded the preprocessing skip that check)."""
    built = manifest["model"]
    recorded = built.get("preprocessing")
    if isinstance(recorded, Mapping) and preprocessing is not None:
        changed = [f"{key} {recorded.get(key)} vs {preprocessing.get(key)}"
                   for key in sorted(set(recorded) | set(preprocessing)) if recorded.get(key) != preprocessing.get(key)]
        if changed:
            raise IndexStoreError(
                f"index {index_dir} was built with another image preprocessing than {source} has "
                f"({'; '.join(changed)}; index vs model): one index cannot mix embeddings of two "
                f"preprocessings; use the index's model or rebuild the index with `ivt index build --force`")
    if fingerprint != built["fingerprint"]:
        raise IndexStoreError(
            f"index {index_dir} was built with model {built['fingerprint'][:12]} "
            f"({built.get('checkpoint', 'unknown checkpoint')}), but {source} is model {fingerprint[:12]}: "
            f"embeddings of different models are not comparable; use the index's model or rebuild the "
            f"index with `ivt index build --force`")
    if tokenizer_fingerprint != manifest["tokenizer"]["fingerprint"]:
        raise IndexStoreError(
            f"index {index_dir} was built with tokenizer {manifest['tokenizer']['fingerprint'][:12]}, but "
            f"{source} has tokenizer {tokenizer_fingerprint[:12]}; use the index's run directory or rebuild")


def _tracks(items: Sequence[Item]) -> dict[int, TrackSpan]:
    members: dict[int, list[tuple[int, int, VideoRef]]] = {}
    for i, item in enumerate(items):
        if item.video is not None:
            members.setdefault(item.video.track, []).append((item.video.frame, i, item.video))
    spans = {}
    for track, entries in members.items():
        entries.sort()
        first, last = entries[0][2], entries[-1][2]
        spans[track] = TrackSpan(track, first.source, tuple(i for _, i, _ in entries), first.time, last.time,
                                 first.frame, last.frame)
    return spans
