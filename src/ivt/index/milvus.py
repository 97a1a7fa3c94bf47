"""The index as a Milvus collection: one backend for a laptop, a server and a cluster. This module
makes and writes it (addresses, connections, collections, the manifest, ingest);
:mod:`ivt.index.milvus_gallery` searches it.

An index in Milvus is named ``milvus:URI#COLLECTION``. URI is a local ``.db`` file (milvus-lite,
embedded, one process at a time), or ``http(s)://HOST:PORT`` of a Milvus standalone server or
cluster (any number of ingest workers and searchers at once). ``pymilvus.MilvusClient`` speaks
to all of them, so moving from a laptop to a cluster is a change of URI. A token for a server
with authentication comes from ``MILVUS_TOKEN`` (never from the command line, where other users
see it); ``https://`` turns TLS on.

Two collections make one index:

- ``COLLECTION`` holds the items: ``id`` (the content's sha256, the primary key), ``embedding``
  (float32, L2-normalised), the filterable fields ``video`` / ``camera`` / ``track`` / ``frame``
  / ``time`` (seconds into the video) / ``has_wall`` + ``wall_time`` (epoch seconds), and
  ``record`` (JSON: path, size, person id, video provenance). Items are written with ``upsert``:
  the same content written twice, even by two workers racing, is one entity.
- ``COLLECTION__ivt_meta`` describes it: the ``manifest`` row (model and tokenizer fingerprints,
  image preprocessing, embedding size, index type and parameters, the crop store) checked on
  every open, and one ``source:SHA256`` row per video (its record, and whether it was read to
  the end: a worker killed mid-video leaves it incomplete, and the next add of that video goes
  through it again, keeping only what is not there yet).

A forced rebuild (``--force``) is written to ``COLLECTION__ivt_staging`` (and its meta) and takes
the name only once complete, so a failed rebuild leaves the old index as it was (see
:func:`take_over`). Names containing ``__ivt_`` are ivt's own.

Video crops are files in a crop store, a directory every ingest worker and server can read (a
shared mount): ``CROPS/ab/ab12...jpg``, content-addressed like ivt's own ``crops/``. A server
serves an image only by id, and only while its bytes still have that sha256.

Search runs in Milvus (FLAT, HNSW, IVF_FLAT, IVF_SQ8, IVF_PQ; filters are Milvus expressions, so they run
inside the engine before ranking: k results come back whenever k items pass); the candidates'
stored float32 vectors are then re-scored here, so returned scores are true cosines whatever
the index type.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ivt.errors import ConfigError, DataError, IndexStoreError
from ivt.files import atomic_write, output_problem
from ivt.index.backends import resolve_pq
from ivt.index.clock import last_frame_time, start_time_problem
from ivt.index.filters import MAX_CAMERA, parse_time
from ivt.index.store import Item, now_iso, sha256_bytes, unit_rows_problem

PREFIX = "milvus:"
FORMAT = "ivt-milvus"
FORMAT_VERSION = 1
META_SUFFIX = "__ivt_meta"
RESERVED = "__ivt_"             # ivt's own collections: COLLECTION__ivt_meta, a forced rebuild's staging copy
STAGING_SUFFIX = "__ivt_staging"
RETIRED_SUFFIX = "__ivt_retired"
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ")
#: Parameters of each index type with their defaults; ``rerank`` x k candidates are re-scored.
DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "FLAT": {"rerank": 1},
    "HNSW": {"M": 32, "ef_construction": 80, "ef_search": 128, "rerank": 1},
    "IVF_FLAT": {"nlist": 1024, "nprobe": 32, "rerank": 1},
    "IVF_SQ8": {"nlist": 1024, "nprobe": 32, "rerank": 4},
    "IVF_PQ": {"nlist": 1024, "m": 0, "nbits": 8, "nprobe": 32, "rerank": 10},   # m 0: dim / 4 (or below)
}
#: Connection settings passed through to ``MilvusClient`` (never stored with the collection).
CONNECTION_PARAMS = ("token", "db_name", "server_pem_path", "server_name", "ca_pem_path", "client_pem_path",
                     "client_key_path")
CONNECT_SECONDS = 10            # how long to wait for a server that does not answer
WRITE_ROWS = 1000               # rows per upsert (milvus-lite slows down ~50x with 10,000 at once)
TRACK_BITS = 24                 # tracks of one video: ids first_track .. first_track + 2**24 - 1
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
_TEXT = 4 * MAX_CAMERA           # bytes of the longest camera name in UTF-8


@dataclass(frozen=True)
class MilvusAddress:
    """Where an index lives in Milvus: a client URI and a collection name."""

    uri: str
    collection: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.uri}#{self.collection}"

    @property
    def meta(self) -> str:
        return self.collection + META_SUFFIX

    @property
    def is_local(self) -> bool:
        return not self.uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def is_milvus(location: object) -> bool:
    """Whether an index location names a Milvus collection (``milvus:URI#COLLECTION``)."""
    return isinstance(location, str) and location.startswith(PREFIX)


def make_address(uri: str, collection: str) -> MilvusAddress:
    """A checked address: a non-empty URI (a local file must end in ``.db``) and a collection name
    Milvus accepts. ConfigError naming the value otherwise."""
    uri, collection = str(uri).strip(), str(collection).strip()
    if not uri:
        raise ConfigError("milvus: give the uri (a local .db file, or http://HOST:PORT of a server)")
    if not _NAME_RE.match(collection) or RESERVED in collection:
        raise ConfigError(f"milvus: collection {collection!r} must start with a letter or '_', hold only letters, "
                          f"digits and '_' (at most 201), and not contain {RESERVED} (ivt's own collections do)")
    address = MilvusAddress(uri, collection)
    if address.is_local:
        path = Path(uri).expanduser()
        if path.suffix != ".db":
            raise ConfigError(f"milvus: uri {uri!r} is neither http(s)://HOST:PORT nor a local file ending in .db")
        if path.is_dir():
            raise ConfigError(f"milvus: uri {uri!r} is a directory; give a .db file inside it")
        address = MilvusAddress(str(path.resolve()), collection)
    return address


def parse_address(location: str) -> MilvusAddress:
    """``milvus:URI#COLLECTION`` -> :class:`MilvusAddress` (ConfigError when malformed)."""
    body = location[len(PREFIX):]
    uri, sep, collection = body.rpartition("#")
    if not sep:
        raise ConfigError(f"{location!r}: a Milvus index is named milvus:URI#COLLECTION, e.g. "
                          f"milvus:http://localhost:19530#people or milvus:/data/people.db#people")
    return make_address(uri, collection)


def connect(address: MilvusAddress, connection: Mapping[str, str] | None = None, create: bool = False) -> Any:
    """A ``MilvusClient`` for ``address``; IndexStoreError when Milvus cannot be reached. A local
    .db file must exist unless ``create`` (a build): reading never creates a file or a folder."""
    try:
        with warnings.catch_warnings():   # milvus-lite 2.5 imports the deprecated pkg_resources
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            from pymilvus import MilvusClient
    except ImportError as exc:  # pragma: no cover - pymilvus is a dependency
        raise ConfigError("the milvus backend needs pymilvus (pip install pymilvus milvus-lite)") from exc
    quiet_milvus_logs()
    kwargs = {k: v for k, v in (connection or {}).items() if k in CONNECTION_PARAMS}
    if "token" not in kwargs and os.environ.get("MILVUS_TOKEN"):
        kwargs["token"] = os.environ["MILVUS_TOKEN"]
    if address.is_local:
        _local_file(Path(address.uri), create)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            return MilvusClient(address.uri, timeout=CONNECT_SECONDS, **kwargs)
    except Exception as exc:  # pymilvus raises several types (MilvusException, connection errors)
        raise IndexStoreError(f"cannot open Milvus at {address.uri} ({_reason(exc)})"
                              + ("; a local .db file is open in one process at a time" if address.is_local else "")
                              ) from exc


def _local_file(path: Path, create: bool) -> None:
    if not create:
        if not path.is_file():
            raise IndexStoreError(f"no Milvus database {path}; build the index with `ivt index build --backend "
                                  f"milvus --param uri={path} collection=...`")
        return
    problem = output_problem(path)
    if problem is not None:
        raise IndexStoreError(f"milvus: {problem}")
    path.parent.mkdir(parents=True, exist_ok=True)


def _not_milvus_lite(record: logging.LogRecord) -> bool:
    return Path(record.pathname).parent.name != "milvus_lite"


def quiet_milvus_logs() -> None:
    """Keep pymilvus's and milvus-lite's own log lines ("[ERROR][handler]: RPC error ...") off the
    terminal: ivt's message names the failure and Milvus's reason once. ``IVT_DEBUG=1`` keeps them."""
    if os.environ.get("IVT_DEBUG"):
        return
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (name == "pymilvus" or name.startswith("pymilvus.")) and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL + 1)
    root = logging.getLogger()
    if _not_milvus_lite not in root.filters:       # milvus-lite logs on the root logger
        root.addFilter(_not_milvus_lite)


def milvus_string(text: str) -> str:
    """``text`` as a string literal of a Milvus filter expression: in double quotes, backslashes and
    double quotes escaped, every other character as itself (Milvus does not decode ``\\uXXXX``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "message", "") or exc).strip().splitlines()[0][:300] if str(exc) else type(exc).__name__


def resolve_params(given: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
    """(connection settings, index settings) from ``--param`` values: ``index`` (FLAT, HNSW,
    IVF_FLAT, IVF_SQ8) and its parameters, ``crops`` (the crop store directory), ``uri`` and
    ``collection`` are taken out by the caller. ConfigError for unknown names and bad values."""
    given = dict(given or {})
    connection = {k: str(given.pop(k)) for k in list(given) if k in CONNECTION_PARAMS}
    kind = str(given.pop("index", "FLAT")).upper()
    if kind not in INDEX_TYPES:
        raise ConfigError(f"milvus: index {kind!r} is not one of {', '.join(INDEX_TYPES)}")
    params: dict[str, Any] = dict(DEFAULT_PARAMS[kind])
    for key, value in given.items():
        if key not in params:
            valid = ", ".join(["index", "crops", *params, *CONNECTION_PARAMS])
            raise ConfigError(f"milvus index {kind} has no parameter {key!r} (valid: {valid})")
        params[key] = positive_int(key, value)
    return connection, {"index": kind, **params}


def positive_int(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"milvus parameter {key}={value!r} is not an integer") from None
    if number <= 0:
        raise ConfigError(f"milvus parameter {key}={value!r} must be positive")
    return number


def milvus_call(what: str, address: MilvusAddress, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call; a Milvus failure becomes an IndexStoreError naming the collection."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - pymilvus has no single base class for its failures
        if isinstance(exc, (IndexStoreError, ConfigError, DataError)):
            raise
        raise IndexStoreError(f"Milvus {address}: {what} failed ({_reason(exc)})") from exc


# ---------------------------------------------------------------------------------------------
# Collections


def _item_schema(client: Any, dim: int) -> Any:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False,
                                  description="ivt person-retrieval index (items)")
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("video", DataType.BOOL)
    schema.add_field("camera", DataType.VARCHAR, max_length=_TEXT)
    schema.add_field("track", DataType.INT64)
    schema.add_field("frame", DataType.INT64)
    schema.add_field("time", DataType.DOUBLE)
    schema.add_field("has_wall", DataType.BOOL)
    schema.add_field("wall_time", DataType.DOUBLE)
    schema.add_field("record", DataType.JSON)
    return schema


def _meta_schema(client: Any) -> Any:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False,
                                  description="ivt person-retrieval index (manifest and videos)")
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field("value", DataType.JSON)
    schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)   # Milvus needs a vector field
    return schema


def index_params(client: Any, settings: Mapping[str, Any]) -> Any:
    kind = settings["index"]
    build = {"HNSW": {"M": settings.get("M"), "efConstruction": settings.get("ef_construction")},
             "IVF_FLAT": {"nlist": settings.get("nlist")}, "IVF_SQ8": {"nlist": settings.get("nlist")},
             "IVF_PQ": {"nlist": settings.get("nlist"), "m": settings.get("m"), "nbits": settings.get("nbits")},
             }.get(kind, {})
    params = client.prepare_index_params()
    params.add_index("embedding", index_type=kind, metric_type="IP", params=build)
    return params


def claim_name(client: Any, address: MilvusAddress, force: bool) -> bool:
    """Whether a build at ``address`` replaces something there: an existing index (or another
    collection of that name) is refused without ``force``. With it, the new index is built beside
    the old one and takes its name only once complete (:func:`take_over`)."""
    exists = milvus_call("listing collections", address, client.has_collection, address.collection)
    meta_exists = milvus_call("listing collections", address, client.has_collection, address.meta)
    if meta_exists and not force:
        raise IndexStoreError(f"{address} already holds an ivt index; add to it with `ivt index add`, or pass "
                              f"--force to replace it")
    if exists and not force:
        raise IndexStoreError(f"{address} already holds a collection {address.collection} that is not an ivt index; "
                              f"choose another collection name, or pass --force to replace it")
    return bool(exists or meta_exists)


def staging_address(address: MilvusAddress) -> MilvusAddress:
    """Where a forced rebuild of ``address`` is written until it is complete."""
    return MilvusAddress(address.uri, address.collection + STAGING_SUFFIX)


def create_collections(client: Any, address: MilvusAddress, manifest: dict[str, Any]) -> None:
    """Create the item and meta collections of a new index and write its manifest; when a step
    fails (e.g. an index type this Milvus lacks), what was made is dropped again."""
    dim = int(manifest["embedding"]["dim"])
    try:
        milvus_call("creating the collection", address, client.create_collection, address.collection,
                    schema=_item_schema(client, dim), index_params=index_params(client, manifest["backend"]["params"]),
                    consistency_level="Bounded")
        meta_index = client.prepare_index_params()
        meta_index.add_index("unused", index_type="FLAT", metric_type="L2")
        milvus_call("creating the collection", address, client.create_collection, address.meta,
                    schema=_meta_schema(client), index_params=meta_index, consistency_level="Strong")
        _put_meta(client, address, "manifest", manifest)
    except BaseException:
        drop_collections(client, address)
        raise


def take_over(client: Any, staged: MilvusAddress, address: MilvusAddress, manifest: dict[str, Any]) -> None:
    """Give the complete index built at ``staged`` the name of ``address``, replacing what is there.
    A server renames: the old collections step aside, the new ones take the name, and only then are
    the old ones dropped (any failure renames them back). milvus-lite cannot rename: the new rows
    are copied under the name (a failure while copying leaves the name empty, not half filled, and keeps the
    complete new index at ``staged``)."""
    pairs = ((staged.collection, address.collection), (staged.meta, address.meta))
    if address.is_local:
        drop_collections(client, address)
        try:
            create_collections(client, address, manifest)
            for source, target in pairs:
                _copy_rows(client, address, source, target)
        except Exception as exc:
            drop_collections(client, address)      # never a part of the new index under the name
            raise IndexStoreError(f"{address}: copying the new index under its name failed ({_reason(exc)}); the "
                                  f"complete new index is in collection {staged.collection} of {address.uri}") from exc
        drop_collections(client, staged)
        return
    retired = MilvusAddress(address.uri, address.collection + RETIRED_SUFFIX)
    for old, target in ((retired.collection, address.collection), (retired.meta, address.meta)):
        # left by a swap that was killed: where the name is empty, it is the only copy of the old index
        if (milvus_call("listing collections", address, client.has_collection, old)
                and not milvus_call("listing collections", address, client.has_collection, target)):
            milvus_call("restoring the old collection", address, client.rename_collection, old, target)
    drop_collections(client, retired)
    done: list[tuple[str, str]] = []
    try:
        for (_, target), old in zip(pairs, (retired.collection, retired.meta)):
            if milvus_call("listing collections", address, client.has_collection, target):
                milvus_call("renaming the old collection", address, client.rename_collection, target, old)
                done.append((target, old))
        for source, target in pairs:
            milvus_call("renaming the new collection", address, client.rename_collection, source, target)
            done.append((source, target))
    except BaseException:
        for before, after in reversed(done):
            try:
                client.rename_collection(after, before)
            except Exception:  # noqa: BLE001,S110 - best effort while already failing
                pass
        drop_collections(client, staged)
        raise
    drop_collections(client, retired)


def _copy_rows(client: Any, address: MilvusAddress, source: str, target: str) -> None:
    scan = milvus_call("reading the new index", address, client.query_iterator, source, batch_size=WRITE_ROWS,
                       output_fields=["*"], consistency_level="Strong")
    try:
        while batch := milvus_call("reading the new index", address, scan.next):
            milvus_call("writing the new index", address, client.upsert, target, batch)
    finally:
        scan.close()


def drop_collections(client: Any, address: MilvusAddress) -> None:
    """Remove both collections of an index (a failed build leaves nothing behind)."""
    for name in (address.collection, address.meta):
        try:
            if client.has_collection(name):
                client.drop_collection(name)
        except Exception:  # noqa: BLE001,S110 - best effort while already failing
            pass


def _put_meta(client: Any, address: MilvusAddress, key: str, value: Mapping[str, Any]) -> None:
    milvus_call(f"writing {key}", address, client.upsert, address.meta,
                 [{"key": key, "value": dict(value), "unused": [0.0, 0.0]}])


def get_meta(client: Any, address: MilvusAddress, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not keys:
        return {}
    rows = milvus_call("reading the index's description", address, client.query, address.meta,
                        filter=f"key in [{', '.join(milvus_string(k) for k in keys)}]", output_fields=["key", "value"])
    return {row["key"]: row["value"] for row in rows}


def read_manifest(client: Any, address: MilvusAddress) -> dict[str, Any]:
    """The index's manifest, checked; IndexStoreError when the collection is missing, is not an
    ivt index, or does not match its description."""
    for name in (address.collection, address.meta):
        if not milvus_call("listing collections", address, client.has_collection, name):
            raise IndexStoreError(f"{address}: no collection {name} at {address.uri}; build the index with "
                                  f"`ivt index build --backend milvus --param uri=... collection=...`")
    milvus_call("loading the collection", address, client.load_collection, address.meta)
    manifest = get_meta(client, address, ["manifest"]).get("manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexStoreError(f"{address}: {address.meta} holds no ivt manifest; this collection is not an ivt index")
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexStoreError(f"{address}: manifest version {manifest.get('version')!r}; this ivt reads "
                              f"version {FORMAT_VERSION}")
    _check_manifest(address, manifest)
    dim = manifest["embedding"]["dim"]
    fields = milvus_call("describing the collection", address, client.describe_collection,
                          address.collection)["fields"]
    vector = next((f for f in fields if f["name"] == "embedding"), None)
    if vector is None or int(vector.get("params", {}).get("dim", -1)) != dim:
        raise IndexStoreError(f"{address}: the collection's embedding field does not have the manifest's "
                              f"size {dim}")
    milvus_call("loading the collection", address, client.load_collection, address.collection)
    _check_start_times(client, address)
    return manifest


def _check_start_times(client: Any, address: MilvusAddress) -> None:
    """Refuse a video whose start time, with its frames' times, is no date-time search can show
    (:mod:`ivt.index.clock`): the index is damaged, named when opened rather than when a search meets it."""
    rows = milvus_call("reading the index's videos", address, client.query, address.meta,
                       filter='key like "source:%"', output_fields=["key", "value"])
    for row in rows:
        source = row["value"]
        start = source.get("start_time") if isinstance(source, dict) else None
        if start is None:
            continue
        problem = start_time_problem(start, 0.0, last_frame_time(source.get("fps"), source.get("frame_count")))
        if problem is not None:
            raise IndexStoreError(f"{address}: damaged index: video {source.get('name')!r} (row {row['key']} of "
                                  f"collection {address.meta}) field start_time {start!r}: {problem}")


def _check_manifest(address: MilvusAddress, manifest: dict[str, Any]) -> None:
    """IndexStoreError naming the collection and the field when a manifest of this format lacks
    what ivt reads from it (a damaged index)."""
    def damaged(what: str) -> IndexStoreError:
        return IndexStoreError(f"{address}: damaged index: the manifest in collection {address.meta} {what}")

    missing = [key for key in ("model", "tokenizer", "embedding", "backend") if key not in manifest]
    if missing:
        raise damaged(f"lacks field {', '.join(missing)}")
    model, tokenizer, embedding, backend = (manifest[k] for k in ("model", "tokenizer", "embedding", "backend"))
    if not (isinstance(model, dict) and isinstance(model.get("fingerprint"), str)
            and isinstance(model.get("checkpoint"), str)):
        raise damaged("field model needs a fingerprint and a checkpoint")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("fingerprint"), str):
        raise damaged("field tokenizer needs a fingerprint")
    if not isinstance(embedding, dict) or not _positive(embedding.get("dim")):
        raise damaged("field embedding needs a positive integer dim")
    if not isinstance(backend, dict) or backend.get("name") != "milvus":
        raise damaged(f"field backend names {backend.get('name') if isinstance(backend, dict) else backend!r}, "
                      f"not milvus")
    params = backend.get("params")
    if not isinstance(params, dict) or "index" not in params:
        raise damaged("field backend needs params (the index type and its settings)")
    kind = params["index"]
    if kind not in INDEX_TYPES:
        raise damaged(f"field backend has index {kind!r}, not one of {', '.join(INDEX_TYPES)}")
    for key in DEFAULT_PARAMS[kind]:
        if key not in params:
            raise damaged(f"field backend lacks parameter {key} of index {kind}")
        if not _positive(params[key]):
            raise damaged(f"field backend has {key}={params[key]!r}, not a positive integer")
    unknown = sorted(set(params) - {"index", *DEFAULT_PARAMS[kind]})
    if unknown:
        raise damaged(f"field backend has parameter(s) {', '.join(unknown)}, unknown to index {kind}")
    if manifest.get("crops") is not None and not isinstance(manifest["crops"], str):
        raise damaged("field crops must be a directory or null")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def new_manifest(model_entries: Mapping[str, Any], dim: int, settings: Mapping[str, Any],
                 crops: str | None) -> dict[str, Any]:
    """The manifest of a new Milvus index (automatic parameters resolved for ``dim``)."""
    settings = dict(settings)
    if settings.get("index") == "IVF_PQ":
        resolve_pq(settings, dim, "milvus IVF_PQ")
    return {"format": FORMAT, "version": FORMAT_VERSION, "created": now_iso(), **model_entries,
            "embedding": {"dim": int(dim), "dtype": "float32"},
            "backend": {"name": "milvus", "params": dict(settings)}, "crops": crops}


def default_crop_store(address: MilvusAddress) -> str | None:
    """Where crops go when ``crops`` is not given: beside a local .db file; a server needs one
    named (a directory every worker and server can read)."""
    return str(Path(address.uri).with_suffix("")) + "-crops" if address.is_local else None


# ---------------------------------------------------------------------------------------------
# Ingest


class MilvusSink:
    """:class:`~ivt.index.ingest.IndexSink` writing straight into the collection, batch by batch
    (upserts keyed by sha256: nothing twice, whatever the workers do)."""

    def __init__(self, client: Any, address: MilvusAddress, manifest: Mapping[str, Any]) -> None:
        self.client = client
        self.address = address
        self.crops = Path(manifest["crops"]) if manifest.get("crops") else None
        self.roots: list[str] = []
        self.sources: list[dict[str, Any]] = []

    def indexed(self, shas: Sequence[str]) -> set[str]:
        if not shas:
            return set()
        rows = milvus_call("looking up contents", self.address, self.client.query, self.address.collection,
                            filter=f"id in [{', '.join(milvus_string(s) for s in shas)}]", output_fields=["id"],
                            consistency_level="Session")
        return {row["id"] for row in rows}

    def store_crop(self, data: bytes) -> tuple[str, str]:
        if self.crops is None:
            raise ConfigError(f"{self.address} has no crop store for the people of videos; build it with "
                              f"--param crops=DIR (a directory every ingest worker and server can read)")
        sha = sha256_bytes(data)
        rel = f"{sha[:2]}/{sha}.jpg"
        path = self.crops / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, tmp=path.with_name(f".tmp-{sha}.{os.getpid()}.{threading.get_ident()}"))
        return rel, sha

    def add_video(self, record: dict[str, Any]) -> int | None:
        key = "source:" + record["sha256"]
        known = get_meta(self.client, self.address, [key]).get(key)
        if known is not None and known.get("complete"):
            return None
        record = {**record, "complete": False}
        if known is None:
            _put_meta(self.client, self.address, key, record)
        else:                          # a worker stopped in this video: its record stays as it was
            record = {**known, "complete": False}
        self.sources.append(record)
        return len(self.sources) - 1

    def first_track(self, source: int) -> int:
        return int(self.sources[source]["sha256"][:7], 16) << TRACK_BITS

    def video_done(self, source: int, tracks: set[int]) -> None:
        record = {**self.sources[source], "complete": True}
        _put_meta(self.client, self.address, "source:" + record["sha256"], record)

    def put(self, items: Sequence[Item], embeddings: np.ndarray) -> None:
        check_embeddings(embeddings, f"{self.address}: new embeddings")
        rows = [self._row(item, vector) for item, vector in zip(items, embeddings)]
        for start in range(0, len(rows), WRITE_ROWS):
            milvus_call("writing items", self.address, self.client.upsert, self.address.collection,
                         rows[start:start + WRITE_ROWS])

    def _row(self, item: Item, vector: np.ndarray) -> dict[str, Any]:
        record: dict[str, Any] = {"path": item.path, "width": item.width, "height": item.height,
                                  "root": None if item.root is None else self.roots[item.root]}
        if item.pid is not None:
            record["pid"] = item.pid
        row = {"id": item.sha256, "embedding": vector.astype(np.float32).tolist(), "video": False, "camera": "",
               "track": -1, "frame": -1, "time": -1.0, "has_wall": False, "wall_time": 0.0}
        ref = item.video
        if ref is not None:
            source = self.sources[ref.source]
            first = self.first_track(ref.source)
            if not first <= ref.track < first + (1 << TRACK_BITS):
                raise IndexStoreError(f"{source['name']}: more than {1 << TRACK_BITS} tracks in one video")
            start = source.get("start_time")
            record["video"] = {"source": source["sha256"], "frame": ref.frame, "time": ref.time, "box": list(ref.box),
                               "track": ref.track, "score": ref.score}
            row.update(video=True, camera=str(source.get("camera") or ""), track=ref.track, frame=ref.frame,
                       time=float(ref.time), has_wall=start is not None,
                       wall_time=parse_time(start)[0] + ref.time if start is not None else 0.0)
        row["record"] = record
        return row


def check_embeddings(vectors: np.ndarray, what: str) -> None:
    """IndexStoreError unless every row is a finite unit vector (the rule of ivt's own store)."""
    problem = unit_rows_problem(np.asarray(vectors, dtype=np.float32)) if len(vectors) else None
    if problem is not None:
        raise IndexStoreError(f"{what}: {problem}")


def count_items(client: Any, address: MilvusAddress, expression: str = "", consistency: str = "Session") -> int:
    """How many items the collection holds (that pass ``expression``)."""
    rows = milvus_call("counting items", address, client.query, address.collection, filter=expression,
                        output_fields=["count(*)"], consistency_level=consistency)
    return int(rows[0]["count(*)"]) if rows else 0
