"""Collecting a gallery for an index: image folders, dataset annotations and the people of videos.

Both stores share this: ivt's own versioned directory (:mod:`ivt.index.build`) and Milvus
(:mod:`ivt.index.milvus`). A store is an :class:`IndexSink`: it says which contents (sha256)
it already holds, keeps video crops, registers roots and videos, and receives new items with
their embeddings batch by batch. Files are hashed before they are decoded, so content the
store already holds (or that appears twice in the input) is never decoded or encoded again.
Unreadable images are skipped and reported, never fatal.
"""
from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ivt.errors import ConfigError, DataError, IvtError
from ivt.files import ConfinedRoot, file_sha256
from ivt.index.clock import iso_to_seconds, last_frame_time, seconds_to_iso, span_problem
from ivt.index.filters import camera_name, parse_time
from ivt.index.store import Item, VideoRef, now_iso
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
NOT_AN_IMAGE = "not an image file (or an unsupported format)"
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

    index_dir: str | Path   # a directory, or a Milvus collection's address
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
        state = (f" (version {self.version})" if self.version else
                 "" if self.added else " (nothing new; index unchanged)")
        lines = [f"{printable(self.index_dir)}: {self.added} new item(s), {self.total} in total{state}"
                 f" in {self.seconds:.1f} s"]
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
    from ivt.data.readers import FILE_NAMES, image_format

    p = Path(path)
    if not p.exists():
        raise DataError(f"--images {p}: no such file or directory")
    kind = image_format(p) if p.is_file() else None
    if kind is not None:
        raise DataError(f"--images {p}: this is an image file ({kind}), but --images takes a folder of images "
                        f"(searched recursively) or a dataset annotation file (JSON or JSONL) listing them; to "
                        f"index this image, put it in a folder and give the folder")
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




class IndexSink(Protocol):
    """Where collected items go (ivt's store, Milvus). ``roots`` / ``sources`` are the image
    roots and video records that :class:`Item` ``root`` / ``video.source`` index."""

    roots: list[str]
    sources: list[dict[str, Any]]

    def indexed(self, shas: Sequence[str]) -> set[str]:
        """Those of ``shas`` whose content the store already holds."""

    def store_crop(self, data: bytes) -> tuple[str, str]:
        """Keep a video crop's JPEG bytes; (path relative to the crop store, sha256)."""

    def add_video(self, record: dict[str, Any]) -> int | None:
        """Register a video (``record`` has its sha256); its index in ``sources``, or None when
        the store already holds all of it."""

    def first_track(self, source: int) -> int:
        """The track id of the first track of video ``source`` (ids are unique in the store)."""

    def video_done(self, source: int, tracks: set[int]) -> None:
        """Video ``source`` was read to its end; ``tracks`` are the track ids it gave."""

    def put(self, items: Sequence[Item], embeddings: np.ndarray) -> None:
        """New items and their (N, D) L2-normalised float32 embeddings."""


def check_ingest(every: int, camera: str | None, start_time: str | None,
                 videos: Sequence[str | Path], images: ImageSource | None) -> tuple[list[Path], str | None]:
    """Check what an ingest was given before anything is read: (video paths, start time as UTC
    ISO 8601). DataError / ConfigError naming the option and value."""
    if images is None and not videos:
        raise DataError("nothing to index: give --images and/or --video")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"every (--every) must be an integer >= 1, got {every!r}")
    if camera is not None:
        camera_name(camera, "--camera")
    if start_time is not None:
        when, wall_clock = parse_time(start_time, "--start-time")
        if not wall_clock:
            raise DataError(f"--start-time {start_time!r}: give the wall-clock time of the first frame in ISO 8601 "
                            f"(e.g. 2026-12-03T10:15:00Z)")
        problem = span_problem(when, 0.0, 0.0)
        if problem is not None:
            raise DataError(f"--start-time {start_time!r}: {problem}")
    if (camera or start_time) and not videos:
        raise DataError("--camera and --start-time describe videos: give --video")
    paths = [Path(v) for v in videos]
    for v in paths:
        if not v.is_file():
            raise DataError(f"--video {v}: no such file")
        if camera is None:                  # the file's stem names its camera
            camera_name(v.stem, f"--video {v} without --camera: the file's stem")
    if start_time is not None:
        from ivt.video import video_info

        for v in paths:         # every frame's date-time must be one that search results can show
            info = video_info(v)
            problem = span_problem(when, 0.0, last_frame_time(info.fps, info.frame_count))
            if problem is not None:
                raise DataError(f"--start-time {start_time!r} with --video {v}: {problem}")
        start_time = seconds_to_iso(when)
    return paths, start_time


def check_something_indexed(report: BuildReport) -> None:
    """DataError when the index would hold nothing, saying why: unreadable files, or videos in which
    the detector found no one."""
    if report.total:
        return
    why = []
    if report.unreadable:
        why.append(f"{len(report.unreadable)} unreadable file(s), e.g. {report.unreadable[0][0]}: "
                   f"{report.unreadable[0][1]}")
    searched = [v for v in report.videos if not v.get("skipped")]
    if searched:
        frames = sum(v["frames_read"] for v in searched)
        names = ", ".join(printable(v["name"]) for v in searched[:3]) + (", ..." if len(searched) > 3 else "")
        why.append(f"no person was found in {len(searched)} video(s) ({names}; {frames} frame(s) searched)")
    raise DataError("nothing could be indexed: " + ("; ".join(why) or "no image or video was given"))


class Collector:
    """Encodes what a store does not hold yet and hands it to the sink, a batch at a time (a
    killed ingest loses at most the batch it was encoding)."""

    def __init__(self, model: RetrievalModel, sink: IndexSink, batch_size: int, report: BuildReport) -> None:
        self.model = model
        self.sink = sink
        self.seen: set[str] = set()
        self.batch_size = batch_size
        self.report = report

    def new_among(self, shas: Sequence[str]) -> list[bool]:
        """Which of ``shas`` to index: not in the store, not earlier in this run (each counted)."""
        held = self.sink.indexed([s for s in dict.fromkeys(shas) if s not in self.seen])
        out = []
        for sha in shas:
            if sha in held:
                self.report.already_indexed += 1
                out.append(False)
            elif sha in self.seen:
                self.report.duplicates += 1
                out.append(False)
            else:
                self.seen.add(sha)
                out.append(True)
        return out

    def add(self, items: Sequence[Item], images: Sequence[torch.Tensor]) -> None:
        """Encode ``images`` (uint8 (3, H, W), model size) and hand them to the sink with ``items``."""
        if not items:
            return
        batch = torch.stack(list(images))
        self.sink.put(items, self.model.encode_images(batch, batch_size=self.batch_size).numpy())
        self.report.added += len(items)


def _read_image(fh: BinaryIO, model: RetrievalModel | None) -> tuple[str, Any]:
    """The open file ``fh`` as an image: without ``model`` its header only (Pillow opens lazily, so
    a file that is no image is refused from its first kilobytes), with it decoded and
    preprocessed. ("ok", None or (width, height, uint8 image)) or ("bad", reason)."""
    try:
        with Image.open(fh) as img:
            if model is None:
                return "ok", None
            img.load()
            return "ok", (img.width, img.height, model.preprocess(img))
    except UnidentifiedImageError:
        return "bad", NOT_AN_IMAGE
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, IvtError) as exc:
        return "bad", f"cannot decode ({exc})"


def _hash_file(root: Path, entry: tuple[str, Any]) -> str | tuple[str, str]:
    """The file's sha256 (read in chunks once its header is an image's), or ("bad", reason)."""
    try:
        with open(root / entry[0], "rb") as fh:
            status, problem = _read_image(fh, None)
            if status == "bad":
                return status, problem
            fh.seek(0)
            return file_sha256(fh)
    except OSError as exc:
        return "bad", exc.strerror or str(exc)


def _load_file(model: RetrievalModel, root: Path, entry: tuple[str, Any]) -> tuple[str, Any]:
    """("new", (sha, width, height, uint8 image)) or ("bad", reason): decoded from the open file,
    then that same file hashed in chunks, so memory holds the image, never the whole file."""
    try:
        with open(root / entry[0], "rb") as fh:
            status, value = _read_image(fh, model)
            if status == "bad":
                return status, value
            fh.seek(0)
            return "new", (file_sha256(fh), *value)
    except OSError as exc:
        return "bad", exc.strerror or str(exc)


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def collect_images(collector: Collector, source: ImageSource, progress: bool, threads: int = 4) -> None:
    """Index the image files of ``source`` that the store does not hold yet."""
    sink = collector.sink
    root = str(source.root)
    if root not in sink.roots:
        sink.roots.append(root)
    root_index = sink.roots.index(root)
    bar = tqdm(total=len(source.files), desc="encoding images", unit="img", disable=not progress)
    with ThreadPoolExecutor(threads) as pool:
        for chunk in _chunks(source.files, _CHUNK):
            hashes = list(pool.map(lambda entry: _hash_file(source.root, entry), chunk))
            readable = [(entry, sha) for entry, sha in zip(chunk, hashes) if isinstance(sha, str)]
            for entry, sha in zip(chunk, hashes):
                if not isinstance(sha, str):
                    collector.report.unreadable.append((str(source.root / entry[0]), sha[1]))
            fresh = [entry for (entry, _), new in zip(readable, collector.new_among([s for _, s in readable])) if new]
            items, images = [], []
            for (rel, pid), (status, value) in zip(fresh, pool.map(
                    lambda entry: _load_file(collector.model, source.root, entry), fresh)):
                if status == "bad":
                    collector.report.unreadable.append((str(source.root / rel), value))
                    continue
                sha, width, height, tensor = value
                items.append(Item(path=rel, sha256=sha, width=width, height=height, root=root_index, pid=pid))
                images.append(tensor)
            collector.add(items, images)
            bar.update(len(chunk))
    bar.close()


def collect_video(collector: Collector, path: Path, detector: Detector, every: int, progress: bool,
                  camera: str | None = None, start_time: str | None = None) -> None:
    """Index the people of one video (crops the store already holds are skipped)."""
    from ivt.video import extract_people, video_info

    sink = collector.sink
    info = video_info(path)
    record: dict[str, Any] = {"name": path.name, "frames_read": 0, "crops": 0, "tracks": 0}
    collector.report.videos.append(record)
    source = sink.add_video({"kind": "video", "path": str(path.resolve()), "name": path.name,
                             "sha256": file_sha256(path), "fps": info.fps, "frame_count": info.frame_count,
                             "width": info.width, "height": info.height, "every": every,
                             "detector": detector.name, "background": "dropped", "added": now_iso(),
                             "camera": camera_name(camera or path.stem),
                             "start_time": start_time})
    if source is None:
        record["skipped"] = True
        return
    first = sink.first_track(source)
    total = -(-info.frame_count // every) if info.frame_count else None
    bar = tqdm(total=total, desc=f"people in {printable(path.name)}", unit="frame", disable=not progress)

    def frame_done(_frame: Any) -> None:
        record["frames_read"] += 1
        bar.update(1)

    pending: list[tuple[Item, torch.Tensor]] = []
    tracks: set[int] = set()

    def flush() -> None:
        fresh = [p for p, new in zip(pending, collector.new_among([i.sha256 for i, _ in pending])) if new]
        collector.add([i for i, _ in fresh], [t for _, t in fresh])
        record["crops"] += len(fresh)
        tracks.update(i.video.track for i, _ in fresh)
        pending.clear()

    start = iso_to_seconds(start_time) if start_time is not None else None
    for crop in extract_people(path, detector, every, on_frame=frame_done):
        problem = span_problem(start, 0.0, crop.time) if start is not None else None
        if problem is not None:     # a container that understated its length to check_ingest
            raise DataError(f"{path} with --start-time {start_time}: {problem}")
        buf = io.BytesIO()
        crop.image.save(buf, format="JPEG", quality=CROP_QUALITY)
        rel, crop_sha = sink.store_crop(buf.getvalue())
        ref = VideoRef(source=source, frame=crop.frame, time=crop.time, box=crop.box, track=first + crop.track,
                       score=round(crop.score, 4))
        item = Item(path=rel, sha256=crop_sha, width=crop.image.width, height=crop.image.height, video=ref)
        pending.append((item, collector.model.preprocess(crop.image)))
        if len(pending) >= min(_CHUNK, collector.batch_size):   # a stopped worker loses one batch at most
            flush()
    flush()
    bar.close()
    record["tracks"] = len(tracks)
    sink.video_done(source, tracks)


def collect(collector: Collector, images: ImageSource | None, videos: Sequence[Path], every: int,
            detector: Detector | None, progress: bool, camera: str | None, start_time: str | None) -> None:
    """Index ``images`` and the people of ``videos`` into the collector's sink (videos whose frames
    the detector cannot search are refused before anything is read)."""
    det = None
    if videos:
        from ivt.video import video_info
        from ivt.video.detect import HOGDetector
        from ivt.video.people import check_frame_size

        det = detector or HOGDetector()
        for v in videos:
            info = video_info(v)
            check_frame_size(v, det, info.width, info.height)
    if images is not None:
        collect_images(collector, images, progress)
        collector.report.skipped.extend((str(images.root / rel), why) for rel, why in images.skipped)
    if det is not None:
        for v in videos:
            collect_video(collector, v, det, every, progress, camera, start_time)
