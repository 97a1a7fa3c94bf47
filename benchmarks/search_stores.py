"""Index stores side by side: ivt's own store, milvus-lite and a Milvus standalone server, on the
same structured vectors, in one run.

    python benchmarks/search_stores.py [--n 1000000] [--dim 192] [--queries 100] [--write]

Each store receives the same N items through ivt's own write path (ivt's store: one committed
version; Milvus: ``MilvusSink.put`` in batches of 10,000, the way ``ivt index add`` writes), as
video crops of 10 cameras (so a camera filter keeps 10 %). Figures per store and index type:

* insert: items per second through ivt's write path (Milvus: until every row is searchable), and
  the index build after it;
* latency: one query at a time through the store's ``search`` (the Milvus one includes fetching
  the candidates' vectors and re-scoring them exactly), p50 / p99; a batch of 16 queries in one
  call, per query; a camera-filtered query (10 % of the items pass), p50;
* recall@10 against the exact top 10 (numpy over the same vectors);
* memory: the resident memory of the process holding the index (ivt: this process's growth when
  the index opens; milvus-lite and the server: their own processes), and the disk they use.

The structured generator is :class:`search.Structured` (identities on a 32-d manifold, queries
are vaguer new views), as in ``benchmarks/search.py``. The last section is arithmetic, not a
measurement: what 1B crops need on a Milvus cluster, from the sizes measured here.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gc
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from ivt.index.filters import SearchFilter
from ivt.index.gallery import Gallery
from ivt.index.milvus_gallery import MilvusGallery, search_params_of
from ivt.index.store import Item, VideoRef, index_writer
from results_md import write_section
from search import Structured, _machine, _mb, _ms, _recall

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from milvus_server import MilvusServer  # noqa: E402 - the tests' launcher of the PyPI server

CAMERAS = 10
BATCH = 10_000
FILTER = SearchFilter.make(["cam3"])


def items_of(n: int) -> tuple[list[Item], list[dict]]:
    """N video crops of 10 cameras (round robin), one track per 20 crops, 0.2 s apart."""
    sources = [{"kind": "video", "path": f"/videos/cam{c}.mp4", "name": f"cam{c}.mp4", "camera": f"cam{c}",
                "sha256": hashlib.sha256(f"cam{c}".encode()).hexdigest(), "start_time": "2026-12-03T08:00:00Z",
                "fps": 5.0, "frame_count": n, "width": 1920, "height": 1080, "every": 1, "detector": "synthetic"}
               for c in range(CAMERAS)]
    items = []
    for i in range(n):
        sha = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        cam, j = i % CAMERAS, i // CAMERAS
        ref = VideoRef(source=cam, frame=j, time=0.2 * j, box=(10, 20, 60, 150), track=cam * n + j // 20, score=1.0)
        items.append(Item(path=f"crops/{sha[:2]}/{sha}.jpg", sha256=sha, width=60, height=150, video=ref))
    return items, sources


def manifest_of(dim: int) -> dict:
    return {"model": {"fingerprint": "0" * 64, "checkpoint": "synthetic", "which": "best", "precision": "fp32",
                      "image_size": [384, 128], "embed_dim": dim, "preprocessing": {}},
            "tokenizer": {"fingerprint": "1" * 64, "max_length": 64}}


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pids_named(fragment: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmd:
                out.append(int(entry.name))
    return out


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _single(search, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, list]:
    for q in queries[:5]:
        search(q, k)
    times, tops = [], []
    for q in queries:
        start = time.perf_counter()
        tops.append(search(q, k))
        times.append(time.perf_counter() - start)
    return np.array(times), tops


def _milvus_batch(client, collection: str, params: dict, batch: np.ndarray) -> object:
    return client.search(collection, data=batch.tolist(), limit=10, search_params=params, consistency_level="Bounded")


def _batches(search, queries: np.ndarray, size: int = 16) -> np.ndarray:
    """Seconds per call for batches of ``size`` queries (after one warm-up batch)."""
    search(queries[:size])
    times = []
    for i in range(0, len(queries) - size + 1, size):
        start = time.perf_counter()
        search(queries[i:i + size])
        times.append(time.perf_counter() - start)
    return np.array(times)


def _row(store: str, index: str, n: int, insert: float, build: float, times: np.ndarray, batched: np.ndarray,
         filtered: float, recall: float, memory: int, disk: int) -> dict:
    row = dict(store=store, index=index, n=n, insert_rate=n / insert if insert else 0.0, build=build,
               p50=_ms(times, 50), p99=_ms(times, 99), batch_p50=_ms(batched, 50), batch_p99=_ms(batched, 99),
               filtered=filtered * 1000,
               recall=recall, memory=memory, disk=disk)
    print(row, flush=True)
    return row


# ---------------------------------------------------------------------------------------------


def ivt_rows(base: Path, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, items: list[Item],
             sources: list[dict]) -> list[dict]:
    from ivt.index.backends import build_backend, resolve_params

    rows = []
    n, dim = data.shape
    for name in ("exact", "hnsw", "ivfpq"):
        directory = base / f"ivt-{name}"
        start = time.perf_counter()
        params = resolve_params(name, None, n, dim)
        backend = build_backend(name, params, data)
        build = time.perf_counter() - start
        start = time.perf_counter()
        with index_writer(directory) as writer:
            writer.commit({**manifest_of(dim), "roots": [], "sources": sources,
                           "backend": {"name": name, "params": params}}, data, items, backend.serialize())
        insert = time.perf_counter() - start
        del backend
        gc.collect()
        before = _rss_kb(os.getpid())
        gallery = Gallery.open(directory)
        memory = (_rss_kb(os.getpid()) - before) * 1024
        times, tops = _single(gallery.search, queries)
        ids = np.array([[h.id for h in top] for top in tops])
        batched = _batches(partial(gallery.backend.search, k=10), queries)
        ftimes, _ = _single(partial(gallery.search, where=FILTER), queries[:30])
        rows.append(_row("ivt", f"{name} ({', '.join(f'{k} {v}' for k, v in params.items())})", n, insert, build,
                         times, batched, float(np.median(ftimes)), _recall(ids, truth), memory, _du(directory)))
        del gallery
        gc.collect()
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def milvus_rows(label: str, uri: str, base: Path, data: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                items: list[Item], sources: list[dict], indexes: list[dict], process: str,
                disk_path: Path) -> list[dict]:
    from ivt.index import milvus

    n, dim = data.shape
    address = milvus.make_address(uri, "bench")
    client = milvus.connect(address, create=True)
    rows = []
    first = indexes[0]
    manifest = milvus.new_manifest(manifest_of(dim), dim, first, None)
    milvus.drop_collections(client, address)
    milvus.create_collections(client, address, manifest)
    sink = milvus.MilvusSink(client, address, manifest)
    for record in sources:
        sink.add_video(dict(record))
    # track ids as ivt's Milvus ingest makes them (each video's range starts from its sha256)
    offsets = [sink.first_track(c) - c * n for c in range(CAMERAS)]
    items = [replace(it, video=replace(it.video, track=it.video.track + offsets[it.video.source])) for it in items]
    start = time.perf_counter()
    for i in range(0, n, BATCH):
        sink.put(items[i:i + BATCH], data[i:i + BATCH])
    _flush(client, address)
    insert = time.perf_counter() - start
    for settings in indexes:
        start = time.perf_counter()
        client.release_collection(address.collection)
        if settings is not first:
            client.drop_index(address.collection, "embedding")
            client.create_index(address.collection, milvus.index_params(client, settings))
        _wait_indexed(client, address, n, address.is_local)
        # loaded again: segments loaded before their index was built are served by Milvus's interim
        # index until then (measured: recall@10 0.85 with any ef, 0.997 after the reload)
        client.load_collection(address.collection)
        build = time.perf_counter() - start
        gallery = MilvusGallery(client, address, {**manifest, "backend": {"name": "milvus", "params": settings}})
        deadline = time.monotonic() + 120
        while len(gallery) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        times, tops = _single(gallery.search, queries)
        index_of = {it.sha256: i for i, it in enumerate(items)}
        ids = np.array([[index_of[h.id] for h in top] + [-1] * (10 - len(top)) for top in tops])
        batched = _batches(partial(_milvus_batch, client, address.collection, search_params_of(settings)),
                           queries)
        ftimes, _ = _single(partial(gallery.search, where=FILTER), queries[:30])
        memory = sum(_rss_kb(p) for p in _pids_named(process)) * 1024
        shown = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "index")
        rows.append(_row(label, settings["index"] + (f" ({shown})" if shown else ""), n, insert, build, times,
                         batched, float(np.median(ftimes)), _recall(ids, truth), memory, _du(disk_path)))
        insert = 0.0
    client.drop_collection(address.collection)
    client.drop_collection(address.meta)
    return rows


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("pymilvus", "milvus-lite", "milvus"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found) + " (milvus: the standalone server's package)"


def _lite_version() -> str:
    from importlib.metadata import version

    import milvus_lite

    return getattr(milvus_lite, "__version__", None) or version("milvus-lite")


def _other_lite(args: argparse.Namespace, base: Path) -> list[dict]:
    """The milvus-lite rows again, in a process that imports the milvus-lite of ``--compare-lite``."""
    out = base / "other-lite.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.compare_lite), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--dim", str(args.dim), "--queries",
                           str(args.queries), "--stores", "lite", "--rows-json", str(out)], env=env,
                          capture_output=True, text=True)
    if done.returncode == 0:
        return json.loads(out.read_text())["rows"]
    errors = [line for line in done.stderr.splitlines() if "Error:" in line or "failed:" in line]
    version = subprocess.run([sys.executable, "-c", "import milvus_lite, importlib.metadata as m; "
                              "print(m.version('milvus-lite'))"], env=env, capture_output=True, text=True)
    return [{"store": f"milvus-lite {version.stdout.strip() or '?'}", "failed": (errors or ["(no message)"])[0][:300]}]


def _flush(client, address) -> None:
    try:
        client.flush(address.collection)
    except Exception as exc:  # noqa: BLE001 - milvus-lite flushes by itself
        print(f"flush: {exc}", flush=True)


def _wait_indexed(client, address, n: int, lite: bool, timeout: float = 3600) -> None:
    """Until every flushed row is in the index (milvus-lite reports no progress: it builds at once)."""
    deadline = time.monotonic() + timeout
    while not lite and time.monotonic() < deadline:
        info = client.describe_index(address.collection, "embedding")
        if int(info.get("indexed_rows", 0)) >= n and int(info.get("pending_index_rows", 0)) == 0:
            return
        time.sleep(2)
    if not lite:
        raise TimeoutError(f"index of {address} not built in {timeout} s")


# ---------------------------------------------------------------------------------------------


def cluster_arithmetic(rows: list[dict], dims: tuple[int, ...] = (192, 768)) -> str:
    """What 1B crops need on a Milvus cluster: sizes from first principles, rates from the rows."""
    per_worker = max((r["insert_rate"] for r in rows if r["store"] == "milvus server" and "failed" not in r),
                     default=0.0)
    lines = ["**1B crops on a Milvus cluster (arithmetic from the figures above, not a measurement)**", "",
             "| dim | raw float32 | IVF_PQ codes (m = dim/4, 8 bits) | + ids and fields (~150 B/item) | "
             "query nodes at 64 GB (IVF_PQ, 2x headroom) | HNSW instead (raw + graph, M 32) |",
             "| --- | --- | --- | --- | --- | --- |"]
    items = 1e9
    for dim in dims:
        raw = items * dim * 4
        pq = items * dim / 4
        fields = items * 150
        memory = 2 * (pq + fields)
        hnsw = raw + items * 32 * 2 * 4 + fields
        lines.append(f"| {dim} | {raw / 1e12:.2f} TB | {pq / 1e9:.0f} GB | {(pq + fields) / 1e9:.0f} GB | "
                     f"{int(np.ceil(memory / 64e9))} | {hnsw / 1e12:.2f} TB ({int(np.ceil(2 * hnsw / 64e9))} nodes) |")
    lines += ["", "IVF_PQ keeps dim/4 bytes per vector in memory (192-d: 48 B, 768-d: 192 B); the raw vectors stay in "
              "object storage, and ivt re-scores each query's candidates exactly from the vectors Milvus returns "
              "(`rerank` x k of them). Field data (the sha256 id, camera, track, times, the JSON record) adds "
              "about 150 B per item. HNSW keeps the raw vectors and a graph of 2M neighbours of 4 bytes in "
              "memory."]
    if per_worker:
        lines += ["", f"Ingest: one worker wrote {per_worker:,.0f} items/s into the standalone server here (2 shared "
                  f"cores, the server on the same cores). Writing is the server's side; encoding images is the "
                  f"worker's, at the model's rate ({_encode_note()}). N workers on their own machines reach about "
                  f"N x min(write, encode) until the cluster's data nodes saturate; 1B crops at 1,000 crops/s "
                  f"(a few GPU workers) take {1e9 / 1000 / 86400:.1f} days, at 10,000 crops/s "
                  f"{1e9 / 10000 / 3600:.0f} hours."]
    return "\n".join(lines)


def _encode_note() -> str:
    return "tiny on 2 CPU cores: ~400 crops/s; base on one H200 in bf16: thousands/s"


def report(rows: list[dict], n: int, dim: int, seconds: float, machine: str) -> str:
    lines = [f"Measured by `benchmarks/search_stores.py` on {machine}; {_versions()}; {n:,} structured {dim}-d items "
             f"(video crops of {CAMERAS} cameras), {seconds / 60:.0f} min in all. The Milvus server shares the 2 cores "
             f"with this process. Latency in ms; batch = one call with 16 queries; filtered = a one-camera filter "
             f"(10 % of the items), one query at a time.", "",
             "| store | index | insert items/s | index build s | p50 | p99 | batch p50 | batch p99 | filtered p50 | "
             "recall@10 | memory | disk |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['store']} | FLAT | failed: {r['failed']} |" + " |" * 9)
            continue
        rate = f"{r['insert_rate']:,.0f}" if r["insert_rate"] else "(same data)"
        lines.append(f"| {r['store']} | {r['index']} | {rate} | {r['build']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['batch_p50']:.2f} | {r['batch_p99']:.2f} | {r['filtered']:.2f} | {r['recall']:.3f} | "
                     f"{_mb(r['memory'])} | "
                     f"{_mb(r['disk'])} |")
    lines += ["", cluster_arithmetic(rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--stores", default="ivt,lite,server")
    parser.add_argument("--compare-lite", type=Path, metavar="DIR",
                        help="also run the milvus-lite rows with the milvus-lite installed in DIR (pip --target)")
    parser.add_argument("--rows-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--section", default="search-stores", help="RESULTS.md section to write")
    parser.add_argument("--write", action="store_true", help="regenerate the section in benchmarks/RESULTS.md")
    parser.add_argument("--from-json", type=Path, help="only re-render the report of a saved run")
    args = parser.parse_args()
    out = args.rows_json or Path(__file__).resolve().parent / f"{args.section.replace('-', '_')}.json"
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        text = report(saved["rows"], saved["n"], saved["dim"], saved["seconds"], saved["machine"])
    else:
        start = time.perf_counter()
        gen = Structured(args.dim, seed=args.n)
        data, queries = gen.gallery(args.n), gen.queries(args.queries)
        truth = np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :10]
        items, sources = items_of(args.n)
        stores = args.stores.split(",")
        base = Path(tempfile.mkdtemp(prefix="ivt-stores-"))
        rows: list[dict] = []
        try:
            if "ivt" in stores:
                rows += ivt_rows(base, data, queries, truth, items, sources)
            if "lite" in stores:
                rows += milvus_rows(f"milvus-lite {_lite_version()}", str(base / "lite.db"), base, data, queries,
                                    truth, items, sources,
                                    [{"index": "FLAT", "rerank": 1},
                                     {"index": "IVF_FLAT", "nlist": 1024, "nprobe": 32, "rerank": 1}],
                                    "milvus_lite", base)
            if "server" in stores:
                server = MilvusServer(base / "server").start()
                try:
                    uri = server.wait()
                    rows += milvus_rows("milvus server", uri, base, data, queries, truth, items, sources,
                                        [{"index": "HNSW", "M": 32, "ef_construction": 80, "ef_search": 128,
                                          "rerank": 1},
                                         {"index": "IVF_FLAT", "nlist": 1024, "nprobe": 32, "rerank": 1},
                                         {"index": "IVF_PQ", "nlist": 1024, "m": 48, "nbits": 8, "nprobe": 32,
                                          "rerank": 10}],
                                        "milvus run standalone", base / "server" / "data")
                finally:
                    server.stop()
            if args.compare_lite:
                rows += _other_lite(args, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        seconds = time.perf_counter() - start
        out.write_text(json.dumps({"rows": rows, "n": args.n, "dim": args.dim, "seconds": seconds,
                                   "machine": _machine()}, indent=1))
        text = report(rows, args.n, args.dim, seconds, _machine())
    print(text)
    if args.write:
        write_section(args.section, text, "Index stores side by side (`benchmarks/search_stores.py`"
                      + (f" --n {args.n} --stores {args.stores}" + (" --compare-lite" if args.compare_lite else "")
                         if args.section != "search-stores" else "") + ")")


if __name__ == "__main__":
    main()
