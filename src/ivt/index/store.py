"""The on-disk gallery index: versioned directories, a manifest with checksums, atomic commits.

Layout of an index directory::

    INDEX_DIR/
      CURRENT             the name of the live version ("v000003"), replaced atomically
      v000003/            manifest.json, embeddings.npy (N, D) float32, items.jsonl, [ann.faiss]
      v000002/            the previous version, kept until the next commit
      crops/ab/ab12....jpg  person crops from videos, content-addressed (sha256), shared by versions
      .lock               writers hold an exclusive flock on it

A commit writes a complete new version into a hidden temporary directory (every file fsynced),
renames it to its final name, and only then replaces ``CURRENT``: a crash or kill at any point
leaves ``CURRENT`` naming the previous, complete version. Readers never write and never take the
lock; opening verifies the manifest, the size and sha256 of every file it lists, the array
shapes and every item record, and refuses anything that does not match.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ivt.errors import IndexStoreError
from ivt.files import atomic_write, fsync_dir, parse_json, read_json, relative_path_problem, write_synced
from ivt.index.clock import start_time_problem

FORMAT = "ivt-index"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
LOCK_FILE = ".lock"
CROPS_DIR = "crops"
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
ITEMS = "items.jsonl"
ANN = "ann.faiss"
TMP_PREFIX = ".tmp-"
NORM_TOLERANCE = 1e-3  # |norm - 1| allowed for a stored embedding (float32 normalisation is ~1e-7)
_VERSION_RE = re.compile(r"^v(\d{6})$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED_KEYS = ("format", "version", "created", "updated", "model", "tokenizer", "embedding",
                  "backend", "roots", "sources", "files")


@dataclass(frozen=True)
class VideoRef:
    """Where a person crop comes from: ``source`` indexes the manifest's ``sources`` list; ``box`` is
    the detection (x, y, width, height) in frame pixels; ``track`` links detections of one person."""

    source: int
    frame: int
    time: float
    box: tuple[int, int, int, int]
    track: int
    score: float = 0.0


@dataclass(frozen=True)
class Item:
    """One indexed image. ``path`` is relative to ``roots[root]`` of the manifest, or to the index
    directory itself when ``root`` is None (crops cut from videos); ``sha256`` is of the file."""

    path: str
    sha256: str
    width: int
    height: int
    root: int | None = None
    pid: int | None = None
    video: VideoRef | None = None

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.video is not None:
            data["video"] = {**asdict(self.video), "box": list(self.video.box)}
        return json.dumps(data, separators=(",", ":"))


@dataclass
class StoredIndex:
    """A verified, loaded version of an index."""

    directory: Path
    version: str
    manifest: dict[str, Any]
    embeddings: np.ndarray
    items: list[Item]
    ann_path: Path | None = None

    def __len__(self) -> int:
        return len(self.items)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def is_index(path: str | Path) -> bool:
    """Whether ``path`` looks like an index directory (it has a ``CURRENT`` pointer)."""
    return (Path(path) / CURRENT).is_file()


# ---------------------------------------------------------------------------------------------
# Reading and verification


def _fail(index_dir: Path, what: str) -> IndexStoreError:
    return IndexStoreError(f"index {index_dir}: {what}; the index was not modified")


def current_version(index_dir: Path) -> str:
    """The live version name; the pointer must name a ``vNNNNNN`` directory of this index."""
    pointer = index_dir / CURRENT
    if not index_dir.is_dir():
        raise IndexStoreError(f"index directory not found: {index_dir}")
    if not pointer.is_file():
        raise IndexStoreError(f"{index_dir} is not an ivt index (no {CURRENT} file); "
                              f"build one with `ivt index build`")
    name = pointer.read_text(encoding="ascii", errors="replace").strip()
    if not _VERSION_RE.match(name):
        raise _fail(index_dir, f"{CURRENT} holds {name[:40]!r}, not a version name like v000001")
    if not (index_dir / name).is_dir():
        raise _fail(index_dir, f"{CURRENT} names version {name}, which does not exist")
    return name


def _check_manifest(index_dir: Path, manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise _fail(index_dir, f"{MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise _fail(index_dir, f"{MANIFEST} format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise _fail(index_dir, f"{MANIFEST} has format version {manifest.get('version')!r}; this ivt "
                               f"reads version {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise _fail(index_dir, f"{MANIFEST} lacks {', '.join(missing)}")
    emb = manifest["embedding"]
    if not isinstance(emb, dict) or not all(isinstance(emb.get(k), int) and emb[k] >= 0 for k in ("dim", "count")):
        raise _fail(index_dir, f"{MANIFEST} field embedding needs integer dim and count")
    files = manifest["files"]
    if not isinstance(files, dict) or EMBEDDINGS not in files or ITEMS not in files:
        raise _fail(index_dir, f"{MANIFEST} field files must list {EMBEDDINGS} and {ITEMS}")
    for name, info in files.items():
        if name not in (EMBEDDINGS, ITEMS, ANN):
            raise _fail(index_dir, f"{MANIFEST} lists an unknown file {name!r}")
        if not (isinstance(info, dict) and isinstance(info.get("size"), int)
                and isinstance(info.get("sha256"), str) and _SHA_RE.match(info["sha256"])):
            raise _fail(index_dir, f"{MANIFEST} entry for {name} needs an integer size and a sha256")
    if not isinstance(manifest["roots"], list) or not all(isinstance(r, str) for r in manifest["roots"]):
        raise _fail(index_dir, f"{MANIFEST} field roots must be a list of directories")
    if not isinstance(manifest["sources"], list):
        raise _fail(index_dir, f"{MANIFEST} field sources must be a list")
    for n, source in enumerate(manifest["sources"]):
        if not isinstance(source, dict):
            raise _fail(index_dir, f"{MANIFEST} field sources[{n}] must be an object, not {type(source).__name__}")
        if not isinstance(source.get("path"), str) or not source["path"]:
            raise _fail(index_dir, f"{MANIFEST} field sources[{n}].path must be a non-empty string (the video file)")
    backend = manifest["backend"]
    if not isinstance(backend, dict) or not isinstance(backend.get("name"), str):
        raise _fail(index_dir, f"{MANIFEST} field backend needs a name")
    if (backend["name"] != "exact") != (ANN in files):
        raise _fail(index_dir, f"backend {backend['name']!r} and the presence of {ANN} disagree")
    for key in ("model", "tokenizer"):
        if not isinstance(manifest[key], dict) or not isinstance(manifest[key].get("fingerprint"), str):
            raise _fail(index_dir, f"{MANIFEST} field {key} needs a fingerprint")
    return manifest


def _read_verified(path: Path, info: dict[str, int | str], index_dir: Path, check_hash: bool = True) -> bytearray:
    """The file's bytes, after checking its size (and sha256) against the manifest."""
    if not path.is_file():
        raise _fail(index_dir, f"{path.name} is missing")
    size = path.stat().st_size
    if size != info["size"]:
        raise _fail(index_dir, f"{path.name} has {size} bytes, the manifest says {info['size']}")
    data = bytearray(size)
    view = memoryview(data)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        done = 0
        while done < size:
            n = fh.readinto(view[done:done + (1 << 22)])
            if not n:
                raise _fail(index_dir, f"{path.name} was truncated while reading")
            digest.update(view[done:done + n])
            done += n
    if check_hash and digest.hexdigest() != info["sha256"]:
        raise _fail(index_dir, f"{path.name} does not match its sha256 in the manifest (damaged file)")
    return data


def _parse_npy(data: bytearray, index_dir: Path) -> np.ndarray:
    buf = io.BytesIO(data)
    try:
        major, minor = np.lib.format.read_magic(buf)
        if (major, minor) == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    except ValueError as exc:
        raise _fail(index_dir, f"{EMBEDDINGS} is not a .npy array ({exc})") from exc
    if fortran or dtype != np.dtype("<f4") or len(shape) != 2:
        raise _fail(index_dir, f"{EMBEDDINGS} must be a C-ordered float32 matrix, found {dtype} {shape}")
    offset = buf.tell()
    if len(data) - offset != shape[0] * shape[1] * 4:
        raise _fail(index_dir, f"{EMBEDDINGS} size does not match its shape {shape}")
    return np.frombuffer(data, dtype="<f4", offset=offset).reshape(shape)


def unit_rows_problem(embeddings: np.ndarray) -> str | None:
    """What is wrong with rows that should be finite L2-normalised embeddings, or None: a matching
    sha256 (or a database's acknowledgement) only says they are what was written, and such rows
    give NaN or meaningless scores."""
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        return f"row {int(np.argmin(finite))} holds NaN or infinite values"
    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    bad = np.abs(norms - 1.0) > NORM_TOLERANCE
    if bad.any():
        row = int(np.argmax(bad))
        return (f"row {row} has norm {norms[row]:.6g}, not 1 (within {NORM_TOLERANCE:g}): embeddings must be "
                f"L2-normalised")
    return None


def _check_values(embeddings: np.ndarray, index_dir: Path) -> None:
    problem = unit_rows_problem(embeddings)
    if problem is not None:
        raise _fail(index_dir, f"{EMBEDDINGS} {problem}")


def parse_item(line: str, where: str, num_roots: int, num_sources: int) -> Item:
    """One ``items.jsonl`` line -> :class:`Item`, or ValueError naming what is wrong."""
    data = parse_json(line, where, ValueError)
    if not isinstance(data, dict):
        raise TypeError(f"{where}: not a JSON object")
    path, sha = data.get("path"), data.get("sha256")
    if relative_path_problem(path) is not None:
        raise ValueError(f"{where}: path {path!r} must be relative and inside its root")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise ValueError(f"{where}: sha256 {sha!r} is not a hex sha256")
    root = data.get("root")
    if root is None:
        if not path.startswith(CROPS_DIR + "/"):
            raise ValueError(f"{where}: an item without a root must be a crop under {CROPS_DIR}/")
    elif not (isinstance(root, int) and 0 <= root < num_roots):
        raise ValueError(f"{where}: root {root!r} is not an index into the {num_roots} roots")
    for field in ("width", "height"):
        if field not in data:
            raise ValueError(f"{where}: {field} is missing")
        if isinstance(data[field], bool) or not isinstance(data[field], int) or data[field] <= 0:
            raise ValueError(f"{where}: {field} {data[field]!r} is not a positive integer")
    width, height, pid = data["width"], data["height"], data.get("pid")
    if pid is not None and not isinstance(pid, int):
        raise ValueError(f"{where}: pid {pid!r} is not an integer")
    video = data.get("video")
    ref = None
    if video is not None:
        try:
            ref = VideoRef(source=int(video["source"]), frame=int(video["frame"]), time=float(video["time"]),
                           box=tuple(int(v) for v in video["box"]), track=int(video["track"]),
                           score=float(video.get("score", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: bad video provenance ({exc})") from exc
        if len(ref.box) != 4 or not 0 <= ref.source < num_sources:
            raise ValueError(f"{where}: video box must have 4 numbers and source must index the sources")
    return Item(path=path, sha256=sha, width=width, height=height, root=root, pid=pid, video=ref)


def _check_start_times(index_dir: Path, sources: Sequence[dict[str, Any]], items: Sequence[Item]) -> None:
    """Refuse a video start time that, with the times of its items, is no date-time search can show."""
    times: dict[int, list[float]] = {}
    for item in items:
        if item.video is not None:
            span = times.setdefault(item.video.source, [item.video.time, item.video.time])
            span[0], span[1] = min(span[0], item.video.time), max(span[1], item.video.time)
    for n, source in enumerate(sources):
        start = source.get("start_time")
        problem = None if start is None else start_time_problem(start, *times.get(n, (0.0, 0.0)))
        if problem is not None:
            raise _fail(index_dir, f"{MANIFEST} field sources[{n}].start_time {start!r}: {problem}")


def read_items(path: Path, num_roots: int, num_sources: int, data: bytes | None = None) -> list[Item]:
    """Parse an ``items.jsonl`` (from ``data`` when already read)."""
    text = (bytes(data) if data is not None else path.read_bytes()).decode("utf-8")
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            items.append(parse_item(line, f"{path.name} line {n}", num_roots, num_sources))
    return items


def read_index(index_dir: str | Path, *, verify: bool = True) -> StoredIndex:
    """Open the live version of an index, verifying everything the manifest lists.

    ``verify=False`` skips the sha256 of the files (sizes, shapes and items are still checked);
    only for internal bookkeeping, never for serving.
    """
    index_dir = Path(index_dir)
    version = current_version(index_dir)
    vdir = index_dir / version
    manifest = _check_manifest(index_dir, read_json(vdir / MANIFEST, lambda what: _fail(index_dir, what)))
    files = manifest["files"]
    emb_bytes = _read_verified(vdir / EMBEDDINGS, files[EMBEDDINGS], index_dir, verify)
    items_bytes = bytes(_read_verified(vdir / ITEMS, files[ITEMS], index_dir, verify))
    if ANN in files and verify:
        _read_verified(vdir / ANN, files[ANN], index_dir)
    elif ANN in files and (not (vdir / ANN).is_file() or (vdir / ANN).stat().st_size != files[ANN]["size"]):
        raise _fail(index_dir, f"{ANN} is missing or does not have the size the manifest says")
    embeddings = _parse_npy(emb_bytes, index_dir)
    count, dim = manifest["embedding"]["count"], manifest["embedding"]["dim"]
    if embeddings.shape != (count, dim):
        raise _fail(index_dir, f"{EMBEDDINGS} has shape {embeddings.shape}, the manifest says ({count}, {dim})")
    _check_values(embeddings, index_dir)
    try:
        items = read_items(vdir / ITEMS, len(manifest["roots"]), len(manifest["sources"]), items_bytes)
    except (TypeError, ValueError) as exc:  # json and UnicodeDecodeError are ValueErrors
        raise _fail(index_dir, str(exc)) from exc
    if len(items) != count:
        raise _fail(index_dir, f"{ITEMS} has {len(items)} items, the manifest says {count}")
    _check_start_times(index_dir, manifest["sources"], items)
    return StoredIndex(index_dir, version, manifest, embeddings, items, vdir / ANN if ANN in files else None)


# ---------------------------------------------------------------------------------------------
# Writing


def _npy_chunks(array: np.ndarray) -> list[bytes | memoryview]:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return [header.getvalue(), memoryview(np.ascontiguousarray(array)).cast("B")]


def _versions(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))


class IndexWriter:
    """Write access to an index directory; get one from :func:`index_writer`, which holds the lock.

    ``current()`` reads the live version (verified) so an add can extend it; ``commit()`` writes a
    new version atomically and then drops versions older than the previous one, stale temporary
    directories and crops no kept version refers to.
    """

    def __init__(self, index_dir: Path) -> None:
        self.directory = index_dir
        self.committed = False
        self._created: list[Path] = []   # crops and their folders this writer made, in order

    def current(self) -> StoredIndex | None:
        """The live version, or None for a new (empty or absent) directory."""
        return read_index(self.directory) if is_index(self.directory) else None

    def store_crop(self, data: bytes) -> tuple[str, str]:
        """Save a crop's encoded bytes content-addressed; returns (relative path, sha256)."""
        sha = sha256_bytes(data)
        rel = f"{CROPS_DIR}/{sha[:2]}/{sha}.jpg"
        path = self.directory / rel
        if not path.exists():
            for folder in (path.parent.parent, path.parent):
                if not folder.exists():
                    folder.mkdir()
                    self._created.append(folder)
            atomic_write(path, data, tmp=path.with_name(f"{TMP_PREFIX}{sha}.{os.getpid()}"))
            self._created.append(path)
        return rel, sha

    def discard_new_crops(self) -> None:
        """Remove the crops (and folders) this writer stored: a failed update leaves the index as it was."""
        for path in reversed(self._created):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        self._created.clear()

    def commit(self, manifest: dict[str, Any], embeddings: np.ndarray, items: Sequence[Item],
               ann: bytes | None = None) -> str:
        """Write a new version holding exactly these embeddings/items and make it live."""
        embeddings = np.ascontiguousarray(embeddings, dtype="<f4")
        if embeddings.ndim != 2 or len(embeddings) != len(items):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(items)} items")
        existing = _versions(self.directory)
        number = int(existing[-1][1:]) + 1 if existing else 1
        version = f"v{number:06d}"
        tmp = self.directory / f"{TMP_PREFIX}{version}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            self._write_version(tmp, manifest, embeddings, items, ann)
            os.rename(tmp, self.directory / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.directory)
        atomic_write(self.directory / CURRENT, version + "\n")
        self.committed = True
        self._cleanup(version)
        return version

    @staticmethod
    def _write_version(tmp: Path, manifest: dict[str, Any], embeddings: np.ndarray, items: Sequence[Item],
                       ann: bytes | None) -> None:
        files = {
            EMBEDDINGS: write_synced(tmp / EMBEDDINGS, _npy_chunks(embeddings), exclusive=True),
            ITEMS: write_synced(tmp / ITEMS, "".join(i.to_json() + "\n" for i in items).encode("utf-8"),
                                exclusive=True),
        }
        if ann is not None:
            files[ANN] = write_synced(tmp / ANN, ann, exclusive=True)
        manifest = {**manifest, "format": FORMAT, "version": FORMAT_VERSION, "updated": now_iso(),
                    "files": files}
        manifest["embedding"] = {**manifest.get("embedding", {}), "dim": int(embeddings.shape[1]),
                                 "count": len(items), "dtype": "float32"}
        manifest.setdefault("created", manifest["updated"])
        write_synced(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"), exclusive=True)
        fsync_dir(tmp)

    def _cleanup(self, live: str) -> None:
        """Best effort: keep the live and the previous version, drop everything else."""
        versions = _versions(self.directory)
        at = versions.index(live) if live in versions else len(versions)
        keep = set(versions[max(0, at - 1):at + 1]) | {live}
        for name in versions:
            if name not in keep:
                shutil.rmtree(self.directory / name, ignore_errors=True)
        for stale in self.directory.glob(TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        crops = self.directory / CROPS_DIR
        if not crops.is_dir():
            return
        referenced: set[str] = set()
        for name in keep:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                for line in (self.directory / name / ITEMS).read_text(encoding="utf-8").splitlines():
                    path = parse_json(line, ITEMS, ValueError).get("path", "")
                    if isinstance(path, str) and path.startswith(CROPS_DIR + "/"):
                        referenced.add(path)
        for path in crops.glob("*/*"):
            rel = path.relative_to(self.directory).as_posix()
            if rel not in referenced:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def index_writer(index_dir: str | Path) -> Iterator[IndexWriter]:
    """Exclusive write access to ``index_dir`` (created if absent) for the ``with`` block: an
    flock on its ``.lock`` file, so two writers never interleave (readers need no lock).

    When the block fails before committing, what it created goes (while the lock is still held):
    new crops, the ``.lock`` file, and the directory with its new parents if they were absent, so
    a failed build leaves the path as it was and a failed add leaves the index as it was.
    """
    directory = Path(index_dir)
    new_dirs = [d for d in (directory, *directory.parents) if not d.exists()]
    had_lock = (directory / LOCK_FILE).exists()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise IndexStoreError(f"index {directory} is being written by another process; "
                                  f"try again when it has finished") from exc
        writer = IndexWriter(directory)
        try:
            yield writer
        except BaseException:
            if not writer.committed:
                _undo_writer(writer, new_dirs, had_lock)
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _undo_writer(writer: IndexWriter, new_dirs: list[Path], had_lock: bool) -> None:
    writer.discard_new_crops()
    if new_dirs:
        shutil.rmtree(writer.directory, ignore_errors=True)
        for parent in new_dirs[1:]:          # deepest first; only while empty
            with contextlib.suppress(OSError):
                parent.rmdir()
    elif not had_lock:
        (writer.directory / LOCK_FILE).unlink(missing_ok=True)
