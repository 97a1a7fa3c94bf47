"""Encoding galleries into an index: image folders, dataset annotations and videos.

``build_index`` makes a new index (or, with ``force``, replaces one atomically);
``add_to_index`` appends to an existing one without re-encoding what it holds. Files are hashed
first: content already in the index (or twice in the input) is skipped, so adding the same
folder or video again changes nothing. Unreadable images are skipped and reported, never fatal.
"""
from __future__ import annotations

import functools
import io
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ivt.errors import ConfigError, DataError, IndexStoreError, IvtError
from ivt.files import ConfinedRoot, file_sha256
from ivt.index.backends import (
    SearchBackend,
    build_backend,
    load_backend,
    resolve_params,
)
from ivt.index.filters import parse_time
from ivt.index.gallery import check_compatible
from ivt.index.store import (
    IndexWriter,
    Item,
    VideoRef,
    index_writer,
    is_index,
    now_iso,
    sha256_bytes,
)
from ivt.runtime import precision_name
from ivt.terminal import printable

if TYPE_CHECKING:
    from ivt.inference import RetrievalModel
    from ivt.video.detect import Detector

# GIFs are indexed by their first frame: a GIF in a gallery folder is a picture its owner wants
# found (Pillow decodes it like any still image), and the first frame is what a viewer shows
# before playing; skipping them would drop pictures that the user sees in the folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
#: Image-like extensions that are not indexed; files with them are listed in the report as
#: skipped, so nothing in a gallery folder is left out silently.
OTHER_IMAGE_SUFFIXES = frozenset({
    ".apng", ".avif", ".heic", ".heif", ".jxl", ".svg", ".ico", ".jfif", ".jpe", ".jp2", ".j2k", ".pbm", ".pgm",
    ".ppm", ".pnm", ".psd", ".tga", ".xcf", ".qoi", ".pcx", ".dng", ".cr2", ".nef", ".arw", ".raw"})
CROP_QUALITY = 92   # JPEG quality of stored video crops
_CHUNK = 256        # files decoded per step (bounded memory for any gallery size)


@dataclass
class ImageSource:
    """Image files to index: paths relative to ``root`` with an optional person id each."""

    root: Path
    files: list[tuple[str, int | None]]
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why it is not indexed)


@dataclass
class BuildReport:
    """What a build or add did."""

    index_dir: Path
    version: str | None = None
    added: int = 0
    total: int = 0
    already_indexed: int = 0
    duplicates: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # files of the input not indexed, and why
    videos: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, max_listed: int = 10) -> str:
        """A few human-readable lines (file and video names with control characters escaped)."""
        lines = [f"{printable(self.index_dir)}: {self.added} new item(s), {self.total} in total"
                 + (f" (version {self.version})" if self.version else " (nothing new; index unchanged)")
                 + f" in {self.seconds:.1f} s"]
        if self.already_indexed:
            lines.append(f"  {self.already_indexed} file(s) already in the index (same content): skipped")
        if self.duplicates:
            lines.append(f"  {self.duplicates} duplicate file(s) in the input (same content): indexed once")
        for video in self.videos:
            name = printable(video["name"])
            lines.append(f"  video {name}: {video['frames_read']} frames read, {video['crops']} people "
                         f"crops in {video['tracks']} tracks" if not video.get("skipped")
                         else f"  video {name}: already in the index, skipped")
        for title, listed in ((f"{len(self.unreadable)} unreadable file(s) skipped:", self.unreadable),
                              (f"{len(self.skipped)} file(s) not indexed:", self.skipped)):
            if listed:
                lines.append(f"  {title}")
                lines += [f"    {printable(path)}: {printable(reason)}" for path, reason in listed[:max_listed]]
                if len(listed) > max_listed:
                    lines.append(f"    ... and {len(listed) - max_listed} more")
        return "\n".join(lines)


def image_source(path: str | Path, split: str | None = None, data_format: str = "auto") -> ImageSource:
    """The images behind ``--images``: an annotation file (or a dataset directory holding one
    directly) gives its images with person ids, optionally of one ``split``; any other directory
    is scanned recursively for image files."""
    from ivt.data import load_dataset
    from ivt.data.readers import FILE_NAMES

    p = Path(path)
    if not p.exists():
        raise DataError(f"--images {p}: no such file or directory")
    is_dataset = p.is_file() or split is not None or data_format != "auto" or any(
        c.is_file() and (c.name.lower() in FILE_NAMES or c.suffix.lower() == ".jsonl") for c in p.iterdir())
    if not is_dataset:
        return _folder_source(p)
    dataset = load_dataset(p, data_format)
    records = dataset.records if split is None else dataset.split(split)
    if not records:
        raise DataError(f"{dataset.annotation}: no '{split}' split (present: {', '.join(dataset.splits)})")
    root = dataset.image_root.resolve()
    files = [(Path(r.image).as_posix(), r.raw_pid) for r in records]
    where = f"split {split}" if split else "all splits"
    return ImageSource(root, files, f"{len(files)} images of {dataset.annotation} ({where})")


def _folder_source(folder: Path) -> ImageSource:
    """The image files under ``folder``; other image-like files, and files that lead outside it
    (search would refuse to serve them), are listed as skipped."""
    root = folder.resolve()
    confined = ConfinedRoot(root)
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    for f in sorted(root.rglob("*")):
        suffix = f.suffix.lower()
        if not f.is_file() or (suffix not in IMAGE_SUFFIXES and suffix not in OTHER_IMAGE_SUFFIXES):
            continue
        rel = f.relative_to(root).as_posix()
        problem = confined.problem(rel)
        if problem is not None:
            skipped.append((rel, f"outside {root} ({problem})"))
        elif suffix in OTHER_IMAGE_SUFFIXES:
            skipped.append((rel, f"{suffix} images are not indexed (indexed: {', '.join(IMAGE_SUFFIXES)})"))
        else:
            files.append(rel)
    if not files:
        example = f"; {len(skipped)} file(s) not indexed, e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise DataError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this directory"
                        f"{example}")
    return ImageSource(root, [(f, None) for f in files], f"{len(files)} image files under {root}", skipped)


def model_manifest(model: RetrievalModel, which: str) -> dict[str, Any]:
    """The ``model`` and ``tokenizer`` entries of a manifest for ``model``."""
    return {
        "model": {"fingerprint": model.fingerprint, "checkpoint": str(Path(model.run_dir).resolve()),
                  "which": which, "precision": precision_name(model.dtype),
                  "image_size": list(model.image_size), "embed_dim": int(model.embed_dim),
                  "preprocessing": model.config.preprocessing()},
        "tokenizer": {"fingerprint": model.tokenizer_fingerprint,
                      "max_length": int(getattr(model.tokenizer, "max_length", 0))},
    }


# ---------------------------------------------------------------------------------------------


class _Collector:
    """New items and their embeddings, skipping content the index (or this run) already has."""

    def __init__(self, model: RetrievalModel, index_hashes: Iterable[str], batch_size: int,
                 report: BuildReport) -> None:
        self.model = model
        self.index_hashes = frozenset(index_hashes)
        self.seen: set[str] = set()
        self.batch_size = batch_size
        self.report = report
        self.items: list[Item] = []
        self.embeddings: list[np.ndarray] = []

    def is_new(self, sha: str) -> bool:
        """Count ``sha`` as already indexed / duplicate, or claim it as new."""
        if sha in self.index_hashes:
            self.report.already_indexed += 1
            return False
        if sha in self.seen:
            self.report.duplicates += 1
            return False
        self.seen.add(sha)
        return True

    def add(self, items: Sequence[Item], images: Sequence[torch.Tensor]) -> None:
        """Encode ``images`` (uint8 (3, H, W), model size) and keep them with ``items``."""
        if not items:
            return
        batch = torch.stack(list(images))
        self.embeddings.append(self.model.encode_images(batch, batch_size=self.batch_size).numpy())
        self.items.extend(items)

    def matrix(self, dim: int) -> np.ndarray:
        return np.concatenate(self.embeddings) if self.embeddings else np.zeros((0, dim), np.float32)


def _load_file(model: RetrievalModel, root: Path, skip: frozenset[str], entry: tuple[str, Any]) -> tuple[str, Any]:
    """("new", (sha, width, height, uint8 image)), ("skip", sha) or ("bad", reason)."""
    path = root / entry[0]
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "bad", exc.strerror or str(exc)
    sha = sha256_bytes(data)
    if sha in skip:
        return "skip", sha
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            tensor = model.preprocess(img)
    except UnidentifiedImageError:
        return "bad", "not an image file (or an unsupported format)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, IvtError) as exc:
        return "bad", f"cannot decode ({exc})"
    return "new", (sha, width, height, tensor)


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _collect_images(collector: _Collector, source: ImageSource, root_index: int, progress: bool,
                    threads: int = 4) -> None:
    bar = tqdm(total=len(source.files), desc="encoding images", unit="img", disable=not progress)
    with ThreadPoolExecutor(threads) as pool:
        for chunk in _chunks(source.files, _CHUNK):
            skip = collector.index_hashes | collector.seen
            load = functools.partial(_load_file, collector.model, source.root, skip)
            results = list(pool.map(load, chunk))
            items, images = [], []
            for (rel, pid), (status, value) in zip(chunk, results):
                if status == "bad":
                    collector.report.unreadable.append((str(source.root / rel), value))
                elif status == "skip":
                    collector.is_new(value)
                elif collector.is_new(value[0]):
                    sha, width, height, tensor = value
                    items.append(Item(path=rel, sha256=sha, width=width, height=height, root=root_index, pid=pid))
                    images.append(tensor)
            collector.add(items, images)
            bar.update(len(chunk))
    bar.close()


def _collect_video(collector: _Collector, writer: IndexWriter, path: Path, sources: list[dict[str, Any]],
                   detector: Detector, every: int, track_offset: int, progress: bool,
                   camera: str | None = None, start_time: str | None = None) -> int:
    """Index the people of one video; returns the next free track id."""
    from ivt.video import extract_people, video_info

    info = video_info(path)
    sha = file_sha256(path)
    record: dict[str, Any] = {"name": path.name, "frames_read": 0, "crops": 0, "tracks": 0}
    collector.report.videos.append(record)
    if any(s.get("sha256") == sha for s in sources):
        record["skipped"] = True
        return track_offset
    source_index = len(sources)
    sources.append({"kind": "video", "path": str(path.resolve()), "name": path.name, "sha256": sha,
                    "fps": info.fps, "frame_count": info.frame_count, "width": info.width,
                    "height": info.height, "every": every, "detector": detector.name, "added": now_iso(),
                    "camera": camera or path.stem, "start_time": start_time})
    total = -(-info.frame_count // every) if info.frame_count else None
    bar = tqdm(total=total, desc=f"people in {printable(path.name)}", unit="frame", disable=not progress)

    def frame_done(_frame: Any) -> None:
        record["frames_read"] += 1
        bar.update(1)

    items: list[Item] = []
    images: list[torch.Tensor] = []
    tracks: set[int] = set()
    for crop in extract_people(path, detector, every, on_frame=frame_done):
        buf = io.BytesIO()
        crop.image.save(buf, format="JPEG", quality=CROP_QUALITY)
        rel, crop_sha = writer.store_crop(buf.getvalue())
        if not collector.is_new(crop_sha):
            continue
        track = track_offset + crop.track
        tracks.add(track)
        ref = VideoRef(source=source_index, frame=crop.frame, time=crop.time, box=crop.box, track=track,
                       score=round(crop.score, 4))
        items.append(Item(path=rel, sha256=crop_sha, width=crop.image.width, height=crop.image.height, video=ref))
        images.append(collector.model.preprocess(crop.image))
        record["crops"] += 1
        if len(items) >= _CHUNK:
            collector.add(items, images)
            items, images = [], []
    collector.add(items, images)
    bar.close()
    record["tracks"] = len(tracks)
    return max(tracks, default=track_offset - 1) + 1


def _update(index_dir: Path, model: RetrievalModel, *, create: bool, images: ImageSource | None,
            videos: Sequence[str | Path], every: int, detector: Detector | None, backend: str,
            backend_params: dict[str, Any] | None, which: str, force: bool, batch_size: int,
            progress: bool, camera: str | None = None, start_time: str | None = None) -> BuildReport:
    start = time.perf_counter()
    report = BuildReport(index_dir)
    if images is None and not videos:
        raise DataError("nothing to index: give --images and/or --video")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"every (--every) must be an integer >= 1, got {every!r}")
    if index_dir.exists() and not index_dir.is_dir():
        what = "give --out a new or empty directory" if create else "--index names an index directory"
        raise IndexStoreError(f"{index_dir} is a file, not an index directory; {what} (nothing was changed)")
    if camera is not None and (not camera.strip() or not camera.isprintable()):
        raise DataError(f"--camera {camera!r}: give a printable, non-empty camera name")
    if start_time is not None:
        when, wall_clock = parse_time(start_time, "--start-time")
        if not wall_clock:
            raise DataError(f"--start-time {start_time!r}: give the wall-clock time of the first frame in ISO 8601 "
                            f"(e.g. 2026-12-03T10:15:00Z)")
        start_time = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
    if (camera or start_time) and not videos:
        raise DataError("--camera and --start-time describe videos: give --video")
    video_paths = [Path(v) for v in videos]
    for v in video_paths:
        if not v.is_file():
            raise DataError(f"--video {v}: no such file")
    if create and index_dir.exists() and not is_index(index_dir) and any(
            p.name != ".lock" for p in index_dir.iterdir()):
        raise IndexStoreError(f"{index_dir} exists and is not an ivt index; choose an empty or new --out "
                              f"(nothing was changed)")
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
        collector = _Collector(model, (i.sha256 for i in keep.items) if keep else (), batch_size, report)
        if images is not None:
            root = str(images.root)
            if root not in manifest["roots"]:
                manifest["roots"].append(root)
            _collect_images(collector, images, manifest["roots"].index(root), progress)
            report.skipped.extend((str(images.root / rel), why) for rel, why in images.skipped)
        if video_paths:
            from ivt.video.detect import HOGDetector

            det = detector or HOGDetector()
            tracks = [i.video.track for i in keep.items if i.video is not None] if keep else []
            next_track = max(tracks, default=-1) + 1
            for v in video_paths:
                next_track = _collect_video(collector, writer, v, manifest["sources"], det, every, next_track,
                                            progress, camera, start_time)
        old_count = len(keep) if keep else 0
        report.added = len(collector.items)
        report.total = old_count + report.added
        if report.total == 0:
            example = f", e.g. {report.unreadable[0][0]}: {report.unreadable[0][1]}" if report.unreadable else ""
            raise DataError(f"nothing could be indexed: {len(report.unreadable)} unreadable file(s){example}")
        if report.added == 0 and keep is not None:
            report.seconds = time.perf_counter() - start
            return report
        dim = int(model.embed_dim)
        new = collector.matrix(dim)
        all_items = (keep.items if keep else []) + collector.items
        embeddings = np.concatenate([keep.embeddings, new]) if keep else new
        search = _backend_for(keep, embeddings, backend, backend_params, dim)
        manifest["backend"] = {"name": search.name, "params": search.params}
        report.version = writer.commit(manifest, embeddings, all_items, search.serialize())
    report.seconds = time.perf_counter() - start
    return report


def _backend_for(keep: Any, embeddings: np.ndarray, name: str, params: dict[str, Any] | None,
                 dim: int) -> SearchBackend:
    if keep is None:
        return build_backend(name, resolve_params(name, params, len(embeddings), dim), embeddings)
    info = keep.manifest["backend"]
    old = load_backend(info["name"], info["params"], keep.embeddings, keep.ann_path)
    return old.extended(embeddings)


def build_index(index_dir: str | Path, model: RetrievalModel, *, images: ImageSource | None = None,
                videos: Sequence[str | Path] = (), every: int = 1, detector: Detector | None = None,
                backend: str = "exact", backend_params: dict[str, Any] | None = None, which: str = "best",
                force: bool = False, batch_size: int = 64, progress: bool = True, camera: str | None = None,
                start_time: str | None = None) -> BuildReport:
    """Encode ``images`` and the people of ``videos`` into a new index at ``index_dir``.

    An existing index is only replaced with ``force`` (atomically: it stays usable until the new
    one is complete). ``backend``: ``exact`` (default), ``hnsw`` or ``ivfpq`` with ``backend_params``.
    """
    resolve_params(backend, backend_params, 1 << 20, int(model.embed_dim))  # fail on bad names before encoding
    return _update(Path(index_dir), model, create=True, images=images, videos=videos, every=every,
                   detector=detector, backend=backend, backend_params=backend_params, which=which,
                   force=force, batch_size=batch_size, progress=progress, camera=camera, start_time=start_time)


def add_to_index(index_dir: str | Path, model: RetrievalModel, *, images: ImageSource | None = None,
                 videos: Sequence[str | Path] = (), every: int = 1, detector: Detector | None = None,
                 batch_size: int = 64, progress: bool = True, camera: str | None = None,
                 start_time: str | None = None) -> BuildReport:
    """Append new images / video people to an existing index (same model and tokenizer only);
    what it already holds is neither re-encoded nor re-trained."""
    return _update(Path(index_dir), model, create=False, images=images, videos=videos, every=every,
                   detector=detector, backend="exact", backend_params=None, which="best", force=False,
                   batch_size=batch_size, progress=progress, camera=camera, start_time=start_time)
