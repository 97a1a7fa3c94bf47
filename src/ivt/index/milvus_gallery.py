"""Searching an index in Milvus (:mod:`ivt.index.milvus` makes and writes it): the same methods as
:class:`~ivt.index.gallery.Gallery`, with filters run inside Milvus as boolean expressions and the
candidates' stored vectors re-scored exactly, so scores are true cosines whatever the index type.
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ivt.errors import ConfigError, IndexStoreError
from ivt.index.clock import start_time_problem
from ivt.index.filters import SearchFilter
from ivt.index.gallery import (
    Hit,
    TrackSpan,
    check_compatible,
    confined_file,
    describe_item,
    id_prefix,
    read_verified,
    unique_id,
)
from ivt.index.milvus import (
    MilvusAddress,
    check_embeddings,
    connect,
    count_items,
    get_meta,
    milvus_call,
    milvus_string,
    parse_address,
    positive_int,
    read_manifest,
)
from ivt.index.same_person import CameraMeans
from ivt.index.store import Item, VideoRef

SEARCH_PARAMS = {"ef_search", "nprobe", "rerank"}
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
MAX_CANDIDATES = 16384          # Milvus's limit on one search's top-k
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def filter_expression(where: SearchFilter | None) -> str:
    """The Milvus boolean expression of a filter ('' lets everything through); the score
    condition stays outside (applied to the exact scores)."""
    if where is None or not where.restricts_items:
        return ""
    parts = ["video == true"]
    if where.cameras:
        parts.append(f"camera in [{', '.join(milvus_string(c) for c in where.cameras)}]")
    if where.track is not None:
        parts.append(f"track == {int(where.track)}")
    for bound, op in ((where.after, ">="), (where.before, "<=")):
        if bound is not None:
            value, clock = bound
            parts.append(f"has_wall == true and wall_time {op} {value:.6f}" if clock else f"time {op} {value:.6f}")
    return " and ".join(parts)


def read_consistency() -> str:
    """The consistency of searches: ``MILVUS_CONSISTENCY`` (Strong, Session, Bounded, Eventually),
    by default Bounded: a search may miss the last few seconds of other workers' writes, and
    answers in milliseconds (Strong waits for the server's next time tick, about 200 ms)."""
    value = os.environ.get("MILVUS_CONSISTENCY", "Bounded")
    if value not in CONSISTENCY_LEVELS:
        raise ConfigError(f"MILVUS_CONSISTENCY={value!r} is not one of {', '.join(CONSISTENCY_LEVELS)}")
    return value


def search_params_of(settings: Mapping[str, Any]) -> dict[str, Any]:
    kind = settings["index"]
    inner = {"HNSW": {"ef": settings.get("ef_search")}}.get(kind, {"nprobe": settings.get("nprobe")} if
                                                             kind.startswith("IVF") else {})
    return {"metric_type": "IP", "params": inner}




class MilvusGallery:
    """An index in Milvus, opened for search: the same methods as :class:`~ivt.index.gallery.Gallery`,
    with item ids that are the contents' sha256. Thread-safe (the client is; caches are locked)."""

    def __init__(self, client: Any, address: MilvusAddress, manifest: dict[str, Any],
                 search_params: Mapping[str, int] | None = None) -> None:
        self.client = client
        self.address = address
        self._manifest = manifest
        self.settings = dict(manifest["backend"]["params"])
        for key, value in (search_params or {}).items():
            if key not in SEARCH_PARAMS or key not in self.settings:
                raise IndexStoreError(f"milvus index {self.settings['index']} has no search parameter {key!r}")
            self.settings[key] = positive_int(key, value)
        self.consistency = read_consistency()
        self._lock = threading.Lock()
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sources: dict[str, dict[str, Any]] = {}
        self._camera_means: CameraMeans | None = None

    @classmethod
    def open(cls, location: str | MilvusAddress, search_params: Mapping[str, int] | None = None,
             connection: Mapping[str, str] | None = None) -> MilvusGallery:
        """Connect, check the manifest and the collection, and load it for search."""
        address = location if isinstance(location, MilvusAddress) else parse_address(location)
        client = connect(address, connection)
        return cls(client, address, read_manifest(client, address), search_params)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    @property
    def directory(self) -> str:
        """The index's address (named in messages, as an index directory is)."""
        return str(self.address)

    def __len__(self) -> int:
        return count_items(self.client, self.address, consistency=self.consistency)

    def track_count(self) -> None:
        """Unknown without scanning the collection (None)."""
        return None

    def check_model(self, fingerprint: str, tokenizer_fingerprint: str, source: str = "the model",
                    preprocessing: Mapping[str, Any] | None = None) -> None:
        check_compatible(self.manifest, fingerprint, tokenizer_fingerprint, source, Path(str(self.address)),
                         preprocessing)

    def parse_id(self, raw: str) -> str | None:
        """The item id a request names (a sha256 in hex, or a unique prefix of one in either case:
        :func:`~ivt.index.gallery.id_prefix`), if the collection holds it; DataError when several
        items' ids begin with the prefix."""
        prefix = id_prefix(raw)
        if prefix is None or len(prefix) == 64:
            return prefix if prefix is not None and self._record(prefix, missing_ok=True) is not None else None
        rows = milvus_call("looking up an item id", self.address, self.client.query, self.address.collection,
                           filter=f'id like "{prefix}%"', output_fields=["id"], limit=2,
                           consistency_level=self.consistency)
        return unique_id(raw, sorted(row["id"] for row in rows))

    # -- search ---------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int = 10, per_track: bool = False,
               where: SearchFilter | None = None) -> list[Hit]:
        """The best ``k`` items (exact cosines of Milvus's candidates), filtered inside Milvus."""
        if k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        expression = filter_expression(where)
        if not per_track:
            hits = [Hit(i, s) for i, s, _ in self._ranked(q, k, expression)]
        else:
            hits = self._per_track(q, k, expression)
        if where is not None and where.min_score is not None:
            hits = [h for h in hits if h.score >= where.min_score]
        return hits

    def _per_track(self, q: np.ndarray, k: int, expression: str) -> list[Hit]:
        wanted = max(8 * k, 64)
        while True:
            ranked = self._ranked(q, min(wanted, MAX_CANDIDATES), expression)
            hits: list[Hit] = []
            seen: set[Any] = set()
            for item, score, track in ranked:
                key = ("track", track) if track >= 0 else ("item", item)
                if key not in seen:
                    seen.add(key)
                    hits.append(Hit(item, score, self._span(track) if track >= 0 else None))
                    if len(hits) == k:
                        return hits
            if len(ranked) < min(wanted, MAX_CANDIDATES) or wanted >= MAX_CANDIDATES:
                return hits
            wanted *= 4

    def _ranked(self, q: np.ndarray, k: int, expression: str) -> list[tuple[str, float, int]]:
        """(id, exact score, track) of the best ``k``, best first (ties: lower id first)."""
        candidates = min(MAX_CANDIDATES, k * int(self.settings.get("rerank", 1)))
        result = milvus_call("searching", self.address, self.client.search, self.address.collection,
                              data=[q.tolist()], limit=candidates, filter=expression,
                              output_fields=["embedding", "track", "record"],
                              search_params=search_params_of(self.settings), consistency_level=self.consistency)
        rows = list(result[0]) if result else []
        if not rows:
            return []
        vectors = np.asarray([row["entity"]["embedding"] for row in rows], dtype=np.float32)
        check_embeddings(vectors, f"{self.address}: stored embeddings")
        scores = vectors @ q
        ids = [row["id"] for row in rows]
        with self._lock:
            for row in rows:
                self._remember(row["id"], row["entity"]["record"])
        order = sorted(range(len(rows)), key=lambda j: (-float(scores[j]), ids[j]))[:k]
        return [(ids[j], float(scores[j]), int(rows[j]["entity"]["track"])) for j in order]

    def _span(self, track: int) -> TrackSpan | None:
        rows = milvus_call("reading a track", self.address, self.client.query, self.address.collection,
                            filter=f"track == {int(track)}", output_fields=["id", "frame", "time"],
                            limit=MAX_CANDIDATES, consistency_level=self.consistency)
        if not rows:
            return None
        rows.sort(key=lambda r: (r["frame"], r["id"]))
        return TrackSpan(track, "", tuple(r["id"] for r in rows), float(rows[0]["time"]), float(rows[-1]["time"]),
                         int(rows[0]["frame"]), int(rows[-1]["frame"]))

    # -- items ----------------------------------------------------------------------------------

    def _remember(self, item_id: str, record: dict[str, Any]) -> None:
        self._records[item_id] = record
        self._records.move_to_end(item_id)
        while len(self._records) > 4096:
            self._records.popitem(last=False)

    def _record(self, item_id: str, missing_ok: bool = False) -> dict[str, Any] | None:
        with self._lock:
            if item_id in self._records:
                return self._records[item_id]
        rows = []
        if isinstance(item_id, str) and _SHA_RE.match(item_id):
            rows = milvus_call("reading an item", self.address, self.client.get, self.address.collection,
                                ids=[item_id], output_fields=["record"], consistency_level=self.consistency)
        if not rows:
            if missing_ok:
                return None
            raise IndexStoreError(f"no item {str(item_id)[:70]!r} in {self.address}")
        with self._lock:
            self._remember(item_id, rows[0]["record"])
        return rows[0]["record"]

    def prefetch(self, item_ids: Sequence[str]) -> None:
        """Read the records of the items not yet cached in one call (a track strip describes each
        of its crops: one read each would be a round trip per crop)."""
        with self._lock:
            missing = [i for i in dict.fromkeys(item_ids) if i not in self._records
                       and isinstance(i, str) and _SHA_RE.match(i)]
        if not missing:
            return
        rows = milvus_call("reading items", self.address, self.client.get, self.address.collection,
                           ids=missing, output_fields=["record"], consistency_level=self.consistency)
        with self._lock:
            for row in rows:
                self._remember(row["id"], row["record"])

    def _item(self, item_id: str) -> Item:
        """The item a stored record describes; a record lacking a field (or holding one of the wrong
        kind) is a damaged index, named with the item and the field."""
        record = self._record(item_id)
        field = "record"
        try:
            if not isinstance(record, dict):
                raise TypeError("not an object")
            ref = None
            video = record.get("video")
            if video is not None:
                field = "video"
                ref = VideoRef(source=0, frame=int(video["frame"]), time=float(video["time"]),
                               box=tuple(int(v) for v in video["box"]), track=int(video["track"]),
                               score=float(video.get("score", 0.0)))
            values = {}
            for field in ("path", "width", "height"):
                values[field] = record[field] if field == "path" else int(record[field])
            if not isinstance(values["path"], str):
                field = "path"
                raise TypeError("not text")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, KeyError) and field == "video":
                field = f"video.{exc.args[0]}"
            what = "is missing" if isinstance(exc, KeyError) else f"is bad ({exc})"
            raise IndexStoreError(f"{self.address}: damaged index: item {item_id[:12]} of collection "
                                  f"{self.address.collection}: field {field} {what}") from None
        return Item(path=values["path"], sha256=item_id, width=values["width"], height=values["height"],
                    pid=record.get("pid"), video=ref)

    def _source(self, sha: str) -> dict[str, Any] | None:
        with self._lock:
            if sha in self._sources:
                return self._sources[sha]
        found = get_meta(self.client, self.address, ["source:" + sha]).get("source:" + sha)
        if found is not None:
            with self._lock:
                self._sources[sha] = found
        return found

    def describe(self, item_id: str, track: TrackSpan | None = None) -> dict[str, Any]:
        """JSON-ready provenance of an item (as :meth:`Gallery.describe`)."""
        item = self._item(item_id)
        record = self._record(item_id)
        source = self._source(record["video"]["source"]) if item.video is not None else None
        problem = start_time_problem(source["start_time"], item.video.time, item.video.time) \
            if source is not None and source.get("start_time") is not None else None
        if problem is not None:
            raise IndexStoreError(f"index {self.address}: video {source.get('name')!r} field start_time "
                                  f"{source['start_time']!r}: {problem}")
        span = track or (self._span(item.video.track) if item.video is not None else None)
        return describe_item(item, source, span)

    def item_path(self, item_id: str) -> str:
        return self._item(item_id).path

    def vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """The stored unit embeddings (N, D) of items and their cameras ('' for images), one read."""
        ids = list(item_ids)
        rows = milvus_call("reading items", self.address, self.client.get, self.address.collection, ids=ids,
                           output_fields=["embedding", "camera"], consistency_level=self.consistency) if ids else []
        found = {row["id"]: row for row in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise IndexStoreError(f"no item {str(missing[0])[:70]!r} in {self.address}")
        vectors = np.asarray([found[i]["embedding"] for i in ids], dtype=np.float32).reshape(len(ids), -1)
        check_embeddings(vectors, f"{self.address}: stored embeddings")
        return vectors, [str(found[i]["camera"]) for i in ids]

    def camera_means(self) -> CameraMeans:
        """The mean embedding of each camera's items and of all: one scan of the collection on first
        use, then kept (items written later by other workers are not in it until the index is
        opened again)."""
        with self._lock:
            if self._camera_means is not None:
                return self._camera_means
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        scan = milvus_call("reading every item's embedding", self.address, self.client.query_iterator,
                           self.address.collection, batch_size=2048, output_fields=["embedding", "camera"])
        try:
            while batch := milvus_call("reading every item's embedding", self.address, scan.next):
                vectors = np.asarray([row["embedding"] for row in batch], dtype=np.float64)
                cameras = np.asarray([str(row["camera"]) for row in batch], dtype=object)
                for camera in dict.fromkeys(cameras.tolist()):
                    sums[camera] = sums.get(camera, 0.0) + vectors[cameras == camera].sum(0)
                    counts[camera] = counts.get(camera, 0) + int((cameras == camera).sum())
        finally:
            scan.close()
        if not counts:
            raise IndexStoreError(f"{self.address} holds no items")
        means = CameraMeans.from_sums(sums, counts)
        with self._lock:
            self._camera_means = means
        return means

    def item_with_sha256(self, sha256: str) -> str | None:
        """The item whose content has this sha256 (its id), if the index holds it."""
        return sha256 if self._record(sha256, missing_ok=True) is not None else None

    def track_of(self, item_id: str) -> TrackSpan | None:
        """The video track the item belongs to (None for an image outside videos)."""
        item = self._item(item_id)
        return None if item.video is None else self._span(item.video.track)

    def track_number(self, item_id: str) -> int | None:
        """The number of the item's video track (None for an image outside videos); from its record,
        which a search has just read."""
        item = self._item(item_id)
        return None if item.video is None else item.video.track

    def video_of(self, item_id: str) -> tuple[dict[str, Any], VideoRef] | None:
        """The video record an item was cropped from and where in it (None for other images)."""
        item = self._item(item_id)
        if item.video is None:
            return None
        source = self._source(self._record(item_id)["video"]["source"])
        return None if source is None else (source, item.video)

    def item_file(self, item_id: str) -> Path:
        """The item's file, confined to its root (the crop store for video crops)."""
        record = self._record(item_id)
        if not record.get("root") and not self.manifest.get("crops"):
            raise IndexStoreError(f"item {item_id}: a video crop, but {self.address} names no crop store")
        root = Path(record["root"]) if record.get("root") else Path(self.manifest["crops"])
        return confined_file(item_id, root, record["path"])

    def read_image(self, item_id: str) -> bytes:
        """The bytes of an indexed image, only if they still have the indexed sha256."""
        return read_verified(item_id, self.item_file(item_id), item_id)
