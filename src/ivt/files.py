"""File helpers shared by checkpoints, configs, tokenizers and indexes (torch-free, so the index
can import them): hashing, the one atomic write, and the rule for paths under a root."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO


def file_sha256(path: str | Path | BinaryIO, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's content, read in chunks (``path`` may be a file opened for binary
    reading: hashed from its current position)."""
    digest = hashlib.sha256()
    with open(path, "rb") if isinstance(path, (str, os.PathLike)) else contextlib.nullcontext(path) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that renames and new entries in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: str | Path, data: bytes | Iterable[bytes | memoryview],
                 exclusive: bool = False) -> dict[str, Any]:
    """Write ``data`` (bytes or chunks) to ``path`` and fsync it; ``exclusive`` refuses an existing
    file. Returns the ``size`` and ``sha256`` of what was written (indexes record both)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "xb" if exclusive else "wb") as fh:
        for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def atomic_write(path: str | Path, data: bytes | str, tmp: str | Path | None = None) -> None:
    """Replace ``path`` by ``data`` so that a crash leaves either the old file or the new one,
    never a torn one: write and fsync ``tmp`` (default ``NAME.tmp`` beside it; give a unique name
    where several processes may write the same path), rename it over ``path``, fsync the folder."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    write_synced(tmp, data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write` of ``obj`` as indented JSON."""
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def parse_json(text: str | bytes, where: str, error: Callable[[str], Exception]) -> Any:
    """The JSON value of ``text``; ``error(message)`` is raised, the message naming ``where`` (a
    file, or a line of one), when it is not valid JSON: bad syntax, bad UTF-8, or nesting too deep
    for Python to decode (a RecursionError otherwise)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{where} is not valid JSON (nested too deeply)") from None
    except ValueError as exc:          # JSONDecodeError and UnicodeDecodeError
        raise error(f"{where} is not valid JSON ({exc})") from exc


def read_json(path: str | Path, error: Callable[[str], Exception]) -> Any:
    """The JSON value of the file ``path``; ``error(message)``, naming the file and why, when it
    cannot be read (missing, a directory, no permission) or is not valid JSON (:func:`parse_json`).
    ``error`` is an :class:`~ivt.errors.IvtError` class (``DataError``, ``ConfigError``, ...) or a
    function that words the message for its caller."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_json(data, str(path), error)


def output_problem(path: str | Path, directory: bool = False) -> str | None:
    """Why ``path`` cannot be written, as a message naming it, or None: a file to write or replace
    (``directory``: a directory to create or write into). The path must not be a directory (a
    file), its nearest existing folder (the directory itself when it exists) must be a directory,
    and a file must be creatable there: tried with an empty temporary file, removed at once, so a
    read-only file system, /proc or a folder without permission are found before the work whose
    result could not be saved. Parent folders that do not exist yet are not made here."""
    text = os.fspath(path)
    if "\x00" in text:
        return f"cannot write {text!r}: the path contains a NUL character"
    target = Path(text).absolute()
    if not directory and target.is_dir():
        return f"'{text}' is a directory; give the file to write"
    if directory and target.exists() and not target.is_dir():
        return f"'{text}' is a file, not a directory"
    folder = next(p for p in ([target] if directory else []) + list(target.parents) if p.exists())
    if not folder.is_dir():
        return f"cannot write '{text}': {folder} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".ivt-write-check-", dir=folder)
    except OSError as exc:
        return f"cannot write '{text}': cannot create files in {folder} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    if not directory and target.exists() and not os.access(target, os.W_OK):
        return f"cannot write '{text}': the file is read-only"
    return None


def relative_path_problem(path: object) -> str | None:
    """Why ``path`` cannot name a file under a root by its text alone, or None: it must be a
    non-empty POSIX relative path without ``..``, backslashes, NUL or a leading ``~``. Indexes
    store item paths only in this form, so data that passes here is data an index can hold."""
    if not isinstance(path, str) or not path:
        return "it is not a non-empty path string"
    if "\x00" in path:
        return "it contains a NUL character"
    if "\\" in path:
        return "it contains a backslash; separate folders with '/'"
    parts = PurePosixPath(path)
    if parts.is_absolute():
        return "it is an absolute path"
    if ".." in parts.parts:
        return "it goes up with '..'"
    if path.startswith("~"):
        return "it starts with '~'"
    return None


class ConfinedRoot:
    """The one rule for a file named relative to a root (a dataset's image root, an index's root):
    its path must pass :func:`relative_path_problem` and resolve inside the root, so a symbolic
    link pointing elsewhere leads outside too. Data loading and index search/serve judge paths
    here, so an annotation that ``ivt data check`` accepts never gives an index that ``search``
    refuses.

    Each directory is resolved once (a dataset has few directories and many files), so checking
    every entry of a large annotation costs about one ``lstat`` per file.
    """

    def __init__(self, root: str | Path) -> None:
        self.base = os.path.realpath(root)
        self._dirs: dict[str, str] = {}

    def problem(self, relative: str) -> str | None:
        """Why ``relative`` does not name a file inside the root, or None."""
        problem = relative_path_problem(relative)
        if problem is None and self._resolve(relative) is None:
            problem = f"it resolves to {os.path.realpath(os.path.join(self.base, relative))} through a symbolic link"
        return problem

    def resolve(self, relative: str) -> Path | None:
        """The file ``relative`` names, links followed, or None when it leads outside the root."""
        if relative_path_problem(relative) is not None:
            return None
        path = self._resolve(relative)
        return Path(path) if path is not None else None

    def _resolve(self, relative: str) -> str | None:
        head, name = os.path.split(relative)
        folder = self._dirs.get(head)
        if folder is None:
            folder = self._dirs[head] = os.path.realpath(os.path.join(self.base, head))
        path = os.path.join(folder, name)
        if name in ("", ".") or os.path.islink(path):
            path = os.path.realpath(path)
        inside = path == self.base or path.startswith(self.base.rstrip(os.sep) + os.sep)
        return path if inside else None
