"""Building an index, or adding to one: ivt's own versioned directory, or a Milvus collection.

``build_index`` makes a new index (or, with ``force``, replaces one: atomically in ivt's store);
``add_to_index`` appends to an existing one without re-encoding what it holds. What is indexed
and how (files hashed first, content already held skipped, unreadable files reported) is
:mod:`ivt.index.ingest`; this module is the stores' side: for ivt's store the lock, the
manifest, the search structure and the atomic commit; for Milvus (:mod:`ivt.index.milvus`) the
collection made or checked, written batch by batch.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ivt.errors import ConfigError, IndexStoreError
from ivt.files import output_problem
from ivt.index.backends import (
    SearchBackend,
    build_backend,
    load_backend,
    resolve_params,
)
from ivt.index.gallery import check_compatible
from ivt.index.ingest import (
    BuildReport,
    Collector,
    ImageSource,
    check_ingest,
    check_something_indexed,
    collect,
    model_manifest,
)
from ivt.index.milvus import is_milvus
from ivt.index.store import IndexWriter, Item, StoredIndex, index_writer, is_index, now_iso

if TYPE_CHECKING:
    from ivt.inference import RetrievalModel
    from ivt.video.detect import Detector


class _StoreSink:
    """The new items of one build or add, kept in memory until the commit; video crops go to the
    index directory's content-addressed ``crops/``."""

    def __init__(self, writer: IndexWriter, keep: StoredIndex | None, manifest: dict[str, Any]) -> None:
        self.writer = writer
        self.hashes = frozenset(i.sha256 for i in keep.items) if keep else frozenset()
        self.roots: list[str] = manifest["roots"]
        self.sources: list[dict[str, Any]] = manifest["sources"]
        tracks = [i.video.track for i in keep.items if i.video is not None] if keep else []
        self.next_track = max(tracks, default=-1) + 1
        self.items: list[Item] = []
        self.embeddings: list[np.ndarray] = []

    def indexed(self, shas: Sequence[str]) -> set[str]:
        return {s for s in shas if s in self.hashes}

    def store_crop(self, data: bytes) -> tuple[str, str]:
        return self.writer.store_crop(data)

    def add_video(self, record: dict[str, Any]) -> int | None:
        if any(s.get("sha256") == record["sha256"] for s in self.sources):
            return None
        self.sources.append(record)
        return len(self.sources) - 1

    def first_track(self, source: int) -> int:
        return self.next_track

    def video_done(self, source: int, tracks: set[int]) -> None:
        self.next_track = max(tracks, default=self.next_track - 1) + 1

    def put(self, items: Sequence[Item], embeddings: np.ndarray) -> None:
        self.items.extend(items)
        self.embeddings.append(embeddings)

    def matrix(self, dim: int) -> np.ndarray:
        return np.concatenate(self.embeddings) if self.embeddings else np.zeros((0, dim), np.float32)


def _update(index_dir: Path, model: RetrievalModel, *, create: bool, images: ImageSource | None,
            videos: Sequence[str | Path], every: int, detector: Detector | None, backend: str,
            backend_params: dict[str, Any] | None, which: str, force: bool, batch_size: int,
            progress: bool, camera: str | None = None, start_time: str | None = None) -> BuildReport:
    start = time.perf_counter()
    report = BuildReport(index_dir)
    video_paths, start_time = check_ingest(every, camera, start_time, videos, images)
    check_index_target(index_dir, create)
    with index_writer(index_dir) as writer:
        current = writer.current()
        if create and current is not None and not force:
            raise IndexStoreError(f"{index_dir} already holds an index ({len(current)} items); add to it with "
                                  f"`ivt index add`, or pass --force to replace it (the old index stays until "
                                  f"the new one is complete)")
        if not create and current is None:
            raise IndexStoreError(f"{index_dir} is not an ivt index; create one with `ivt index build`")
        keep = current if not create else None
        if keep is not None:
            check_compatible(keep.manifest, model.fingerprint, model.tokenizer_fingerprint,
                             f"checkpoint {model.run_dir}", index_dir, model.config.preprocessing())
            manifest = {k: v for k, v in keep.manifest.items() if k not in ("files", "updated")}
            manifest["roots"] = list(manifest["roots"])
            manifest["sources"] = list(manifest["sources"])
        else:
            manifest = {"created": now_iso(), **model_manifest(model, which), "roots": [], "sources": []}
        sink = _StoreSink(writer, keep, manifest)
        collect(Collector(model, sink, batch_size, report), images, video_paths, every, detector, progress,
                camera, start_time)
        report.total = (len(keep) if keep else 0) + report.added
        check_something_indexed(report)
        if report.added == 0 and keep is not None:
            report.seconds = time.perf_counter() - start
            return report
        dim = int(model.embed_dim)
        new = sink.matrix(dim)
        all_items = (keep.items if keep else []) + sink.items
        embeddings = np.concatenate([keep.embeddings, new]) if keep else new
        search = _backend_for(keep, embeddings, backend, backend_params, dim)
        manifest["backend"] = {"name": search.name, "params": search.params}
        report.version = writer.commit(manifest, embeddings, all_items, search.serialize())
    report.seconds = time.perf_counter() - start
    return report


def check_index_target(index_dir: str | Path, create: bool) -> None:
    """IndexStoreError unless ``index_dir`` can take a new index (``create``: a new or empty
    directory, or an index to replace, where files can be written) or names an index directory
    to add to; cheap, so callers check it before loading a model or encoding anything."""
    index_dir = Path(index_dir)
    if index_dir.exists() and not index_dir.is_dir():
        what = "give --out a new or empty directory" if create else "--index names an index directory"
        raise IndexStoreError(f"{index_dir} is a file, not an index directory; {what} (nothing was changed)")
    if not create:
        return
    if index_dir.exists() and not is_index(index_dir) and any(p.name != ".lock" for p in index_dir.iterdir()):
        raise IndexStoreError(f"{index_dir} exists and is not an ivt index; choose an empty or new --out "
                              f"(nothing was changed)")
    problem = output_problem(index_dir, directory=True)
    if problem is not None:
        raise IndexStoreError(f"{problem}; give --out a new or empty directory (nothing was changed)")


def _backend_for(keep: Any, embeddings: np.ndarray, name: str, params: dict[str, Any] | None,
                 dim: int) -> SearchBackend:
    if keep is None:
        return build_backend(name, resolve_params(name, params, len(embeddings), dim), embeddings)
    info = keep.manifest["backend"]
    old = load_backend(info["name"], info["params"], keep.embeddings, keep.ann_path)
    return old.extended(embeddings)


def _milvus_update(location: str | Path | None, model: RetrievalModel, *, create: bool,
                   images: ImageSource | None, videos: Sequence[str | Path], every: int,
                   detector: Detector | None, backend_params: dict[str, Any] | None, which: str, force: bool,
                   batch_size: int, progress: bool, camera: str | None, start_time: str | None) -> BuildReport:
    from ivt.index import milvus

    start = time.perf_counter()
    video_paths, start_time = check_ingest(every, camera, start_time, videos, images)
    params = dict(backend_params or {})
    named = {k: str(params.pop(k)) for k in ("uri", "collection") if k in params}
    if location is not None and named:
        raise ConfigError(f"give the Milvus index either as {location} or with --param uri=... collection=..., "
                          f"not both")
    if location is not None:
        address = milvus.parse_address(str(location))
    elif len(named) == 2:
        address = milvus.make_address(named["uri"], named["collection"])
    else:
        raise ConfigError("the milvus backend needs --param uri=URI collection=NAME (URI: a local .db file, or "
                          "http://HOST:PORT of a Milvus server)")
    crops = params.pop("crops", None)
    connection, settings = milvus.resolve_params(params)
    if not create and (crops is not None or settings != {"index": "FLAT", **milvus.DEFAULT_PARAMS["FLAT"]}):
        raise ConfigError("index settings and the crop store are chosen when the index is built")
    client = milvus.connect(address, connection, create=create)
    if create:
        store = crops or milvus.default_crop_store(address)
        manifest = milvus.new_manifest(model_manifest(model, which), int(model.embed_dim), settings,
                                       str(Path(store).expanduser().resolve()) if store else None)
    else:
        manifest = milvus.read_manifest(client, address)
        check_compatible(manifest, model.fingerprint, model.tokenizer_fingerprint, f"checkpoint {model.run_dir}",
                         Path(str(address)), model.config.preprocessing())
    if video_paths and not manifest.get("crops"):
        raise ConfigError(f"{address} has no crop store for the people of videos; build it with --param crops=DIR "
                          f"(a directory every ingest worker and server can read)")
    # A forced build over an existing index writes beside it and takes its name once complete: a
    # failure on the way (nothing indexable, an error, Ctrl-C) leaves the old index as it was.
    replacing = create and milvus.claim_name(client, address, force)
    target = milvus.staging_address(address) if replacing else address
    if replacing:
        milvus.drop_collections(client, target)          # the copy a killed forced build left
    if create:
        milvus.create_collections(client, target, manifest)
    report = BuildReport(str(address))
    try:
        collect(Collector(model, milvus.MilvusSink(client, target, manifest), batch_size, report), images,
                video_paths, every, detector, progress, camera, start_time)
        report.total = milvus.count_items(client, target)
        check_something_indexed(report)
    except BaseException:
        if replacing or (create and report.added == 0):
            milvus.drop_collections(client, target)
        raise
    if replacing:
        milvus.take_over(client, target, address, manifest)
    report.seconds = time.perf_counter() - start
    return report


def build_index(index_dir: str | Path | None, model: RetrievalModel, *, images: ImageSource | None = None,
                videos: Sequence[str | Path] = (), every: int = 1, detector: Detector | None = None,
                backend: str = "exact", backend_params: dict[str, Any] | None = None, which: str = "best",
                force: bool = False, batch_size: int = 64, progress: bool = True, camera: str | None = None,
                start_time: str | None = None) -> BuildReport:
    """Encode ``images`` and the people of ``videos`` into a new index at ``index_dir``.

    An existing index is only replaced with ``force`` (atomically: it stays usable until the new
    one is complete). ``backend``: ``exact`` (default), ``hnsw`` or ``ivfpq`` with ``backend_params``;
    or ``milvus`` (``index_dir`` ``milvus:URI#COLLECTION``, or None and ``uri`` / ``collection``
    in ``backend_params``; see :mod:`ivt.index.milvus`).
    """
    if backend == "milvus" or is_milvus(index_dir):
        if backend not in ("milvus", "exact"):
            raise ConfigError(f"{index_dir} is a Milvus index; its search structure is --param index=..., "
                              f"not --backend {backend}")
        return _milvus_update(index_dir, model, create=True, images=images, videos=videos, every=every,
                              detector=detector, backend_params=backend_params, which=which, force=force,
                              batch_size=batch_size, progress=progress, camera=camera, start_time=start_time)
    if index_dir is None:
        raise ConfigError("give the index directory to create (--out)")
    resolve_params(backend, backend_params, 1 << 20, int(model.embed_dim))  # fail on bad names before encoding
    return _update(Path(index_dir), model, create=True, images=images, videos=videos, every=every,
                   detector=detector, backend=backend, backend_params=backend_params, which=which,
                   force=force, batch_size=batch_size, progress=progress, camera=camera, start_time=start_time)


def add_to_index(index_dir: str | Path, model: RetrievalModel, *, images: ImageSource | None = None,
                 videos: Sequence[str | Path] = (), every: int = 1, detector: Detector | None = None,
                 batch_size: int = 64, progress: bool = True, camera: str | None = None,
                 start_time: str | None = None) -> BuildReport:
    """Append new images / video people to an existing index (same model and tokenizer only);
    what it already holds is neither re-encoded nor re-trained. ``index_dir``: a directory, or
    ``milvus:URI#COLLECTION`` (several processes may add to one Milvus server's index at once)."""
    if is_milvus(index_dir):
        return _milvus_update(index_dir, model, create=False, images=images, videos=videos, every=every,
                              detector=detector, backend_params=None, which="best", force=False,
                              batch_size=batch_size, progress=progress, camera=camera, start_time=start_time)
    return _update(Path(index_dir), model, create=False, images=images, videos=videos, every=every,
                   detector=detector, backend="exact", backend_params=None, which="best", force=False,
                   batch_size=batch_size, progress=progress, camera=camera, start_time=start_time)
