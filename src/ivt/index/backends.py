"""Top-k inner-product search over L2-normalised embeddings: exact, HNSW or IVF-PQ (faiss-cpu).

``exact`` scores every item: one matrix-vector product and a partial sort. Large galleries use
numpy's multi-threaded BLAS: for a single query over 1M x 192 that is over twice as fast as
faiss's ``IndexFlatIP`` on 2 cores (faiss scans for one query on one thread; measured 28 ms
against 72 ms), with no second copy of the vectors. Small galleries use numpy's single-threaded
loops (``einsum``): waking a BLAS or torch thread pool on cores busy with other work costs a
scheduler time slice (measured 8-12 ms per query at 10k-100k items on 2 shared cores, against
0.3 ms single-threaded at 10k), more than the whole product.

``hnsw`` (graph) and ``ivfpq`` (inverted lists of product-quantised codes) are faiss indexes that
propose ``k * rerank`` candidates; the candidates are then re-scored exactly against the stored
float32 embeddings, so the returned scores are always true cosines and only the candidate set is
approximate. Every parameter (including resolved automatic values) goes into the manifest.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ivt.errors import ConfigError

BACKENDS = ("exact", "hnsw", "ivfpq")

#: Parameters of each backend with their defaults (0 = chosen from the gallery size).
DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "exact": {},
    # M 32 / efSearch 128, text-like queries on person-like embeddings (benchmarks/search.py):
    # recall@10 0.998 at 100k in 0.5 ms, 0.986 at 1M in 0.95 ms (2 cores).
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128, "rerank": 4},
    "ivfpq": {"nlist": 0, "m": 0, "nbits": 8, "nprobe": 32, "rerank": 10},
}
#: Parameters that only change how a built index is searched (may be overridden when opening).
SEARCH_PARAMS = {"ef_search", "nprobe", "rerank"}
#: The range of each parameter (inclusive). Bounds that depend on the gallery are checked with it
#: (:func:`check_params`): nlist and 2**nbits at most the item count (faiss's k-means needs a
#: training point per centroid), m a divisor of the embedding size, nprobe at most nlist.
PARAM_RANGES: dict[str, tuple[int, int]] = {
    "M": (2, 512),                   # graph neighbours per item (2 * M ids per item on the base layer)
    "ef_construction": (1, 1 << 16),
    "ef_search": (1, 1 << 16),
    "rerank": (1, 1000),             # candidates per result re-scored exactly
    "nlist": (1, 1 << 24),
    "m": (1, 1 << 16),               # and a divisor of the embedding size
    "nbits": (1, 16),
    "nprobe": (1, 1 << 24),
}
_QUERY_CHUNK = 16  # queries scored at once by exact search (16 x 1M scores = 64 MB)
_SINGLE_THREAD_MAX = 1 << 21  # gallery elements (N x D) below which exact search stays on one thread


def resolve_params(name: str, given: Mapping[str, Any] | None, num_items: int, dim: int) -> dict[str, int]:
    """The full parameter set of backend ``name``: defaults, then ``given``, then automatic values.

    Unknown names and values out of range (:func:`check_params`) are a :class:`~ivt.errors.ConfigError`.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown index backend {name!r}; choose one of {', '.join(BACKENDS)}")
    params = dict(DEFAULT_PARAMS[name])
    for key, value in (given or {}).items():
        if key not in params:
            valid = ", ".join(params) or "none"
            raise ConfigError(f"backend {name} has no parameter {key!r} (valid: {valid})")
        try:
            params[key] = int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"backend parameter {key}={value!r} is not an integer") from exc
    if name == "ivfpq":
        if num_items < 256:
            raise ConfigError(f"the ivfpq backend needs at least 256 items to train its quantisers, "
                              f"got {num_items}; use --backend exact for small galleries")
        if not params["nlist"]:
            params["nlist"] = max(1, min(1 << round(math.log2(4 * math.sqrt(num_items))), num_items // 39))
        if "nprobe" not in (given or {}):
            params["nprobe"] = min(params["nprobe"], params["nlist"])
        resolve_pq(params, dim, "backend ivfpq")
    check_params(name, params, num_items)
    return params


def check_params(name: str, params: Mapping[str, int], num_items: int, keys: Iterable[str] | None = None) -> None:
    """ConfigError naming the parameter, its value and the allowed range when a parameter of
    backend ``name`` (those named in ``keys``, default all) lies outside :data:`PARAM_RANGES` or
    the bounds of a gallery of ``num_items`` (see there; m's divisor rule is :func:`resolve_pq`'s)."""
    for key in params if keys is None else keys:
        value = params[key]
        low, high = PARAM_RANGES[key]
        why = ""
        if key == "nlist" and num_items < high:
            high, why = num_items, f" (each inverted list needs an item to train on; this gallery has {num_items})"
        elif key == "nbits" and num_items < 1 << high:
            high = max(0, num_items.bit_length() - 1)
            why = (f" (2**nbits centroids per sub-quantiser need as many items to train on; this gallery has "
                   f"{num_items})")
        elif key == "nprobe" and "nlist" in params:
            high, why = min(high, params["nlist"]), " (nlist)"
        if not low <= value <= high:
            raise ConfigError(f"backend {name}: {key}={value} is out of range: allowed {low} to {high}{why}")


def resolve_pq(params: dict[str, Any], dim: int, what: str) -> None:
    """Product-quantisation settings ``m`` and ``nbits`` of ``dim``-sized vectors, checked in place
    (ivt's ivfpq and Milvus's IVF_PQ alike); ``m`` 0 means automatic: the largest divisor of
    ``dim`` up to dim / 4 (one byte per four dimensions, 8-bit codes)."""
    if not params["m"]:
        params["m"] = max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)
    if dim % params["m"]:
        raise ConfigError(f"{what}: m={params['m']} must divide the embedding size {dim}")
    low, high = PARAM_RANGES["nbits"]
    if not low <= params["nbits"] <= high:
        raise ConfigError(f"{what}: nbits={params['nbits']} is out of range: allowed {low} to {high}")


class SearchBackend:
    """Search over ``embeddings`` (N, D) float32, L2-normalised; ``ann`` is the faiss index of the
    approximate backends (None for exact)."""

    def __init__(self, name: str, params: Mapping[str, int], embeddings: np.ndarray, ann: Any = None) -> None:
        if (ann is None) != (name == "exact"):
            raise ValueError(f"backend {name}: a faiss index is needed exactly for approximate backends")
        self.name = name
        self.params = dict(params)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.ann = ann
        if ann is not None:
            _set_search_params(ann, name, self.params)
            if ann.ntotal != len(embeddings):
                raise ValueError(f"faiss index holds {ann.ntotal} vectors but there are {len(embeddings)} "
                                 f"embeddings")

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (Q, min(k, N)), best first; scores are exact inner products."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.embeddings.shape[1]))
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.ann is None:
            return self._exact(q, k)
        candidates = min(len(self), k * self.params["rerank"])
        _, ids = self.ann.search(q, candidates)
        scores, top = self.rerank(q, ids, k)
        # faiss pads with -1 when its graph or the probed lists yield fewer than asked (k near the
        # gallery size, a small nprobe): those queries are scored exactly instead.
        short = (top < 0).any(axis=1)
        if short.any():
            scores[short], top[short] = self._exact(q[short], k)
        return scores, top

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``k`` (k <= N) of each query, scoring every item."""
        parts = [_top_k(self._scores(queries[i:i + _QUERY_CHUNK]), np.arange(len(self))[None], k)
                 for i in range(0, len(queries), _QUERY_CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _scores(self, queries: np.ndarray) -> np.ndarray:
        """Inner products (Q, N) with every item; see the module docstring for the two paths."""
        if self.embeddings.size <= _SINGLE_THREAD_MAX:
            return np.einsum("nd,qd->qn", self.embeddings, queries)
        return queries @ self.embeddings.T

    def rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate ``ids`` (Q, C) (-1 = none), the best ``k`` of each row."""
        vectors = self.embeddings[np.maximum(ids, 0)]                   # (Q, C, D)
        scores = np.einsum("qcd,qd->qc", vectors, queries)
        scores[ids < 0] = -np.inf
        return _top_k(scores, ids, min(k, ids.shape[1]))

    def extended(self, embeddings: np.ndarray) -> SearchBackend:
        """A backend over ``embeddings``, whose first rows are this backend's: only the new rows
        are added to the faiss index (nothing is retrained or re-encoded)."""
        old = len(self)
        if embeddings.shape[0] < old or not np.array_equal(embeddings[:old], self.embeddings):
            raise ValueError("extended() needs the old embeddings as the first rows")
        if self.ann is not None and embeddings.shape[0] > old:
            self.ann.add(np.ascontiguousarray(embeddings[old:], dtype=np.float32))
        return SearchBackend(self.name, self.params, embeddings, self.ann)

    def serialize(self) -> bytes | None:
        """The faiss index's bytes (None for exact)."""
        if self.ann is None:
            return None
        import faiss

        return faiss.serialize_index(self.ann).tobytes()


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of ``scores`` (Q, C), best first (ties: lower column first), with
    their ids (``ids`` (Q, C), or (1, C) shared by all rows)."""
    if k < scores.shape[1]:
        cols = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    picked = np.take_along_axis(scores, cols, 1)
    order = np.lexsort((cols, -picked), axis=1)
    cols = np.take_along_axis(cols, order, 1)
    chosen = np.take_along_axis(np.broadcast_to(ids, scores.shape), cols, 1)
    return np.take_along_axis(scores, cols, 1).astype(np.float32), chosen.astype(np.int64)


def _set_search_params(ann: Any, name: str, params: Mapping[str, int]) -> None:
    # Set once when the backend is made: faiss reads them during search, so changing them while
    # other threads search would be a race.
    if name == "hnsw":
        ann.hnsw.efSearch = params["ef_search"]
    elif name == "ivfpq":
        ann.nprobe = params["nprobe"]


def build_backend(name: str, params: Mapping[str, int], embeddings: np.ndarray, seed: int = 0) -> SearchBackend:
    """Build backend ``name`` (resolved ``params``) over ``embeddings``."""
    if name == "exact":
        return SearchBackend(name, params, embeddings)
    import faiss

    dim = embeddings.shape[1]
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    if name == "hnsw":
        ann = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        ann.hnsw.efConstruction = params["ef_construction"]
    elif name == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        ann = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], params["nbits"],
                               faiss.METRIC_INNER_PRODUCT)
        # Small galleries train on what they have (faiss would print a warning per sub-quantiser).
        ann.cp.min_points_per_centroid = 1
        ann.pq.cp.min_points_per_centroid = 1
        # 64 training points per centroid are plenty (faiss asks for 39); more only costs time.
        n_train = min(len(data), max(64 * params["nlist"], 64 * (1 << params["nbits"])))
        sample = np.random.default_rng(seed).choice(len(data), n_train, replace=False) if n_train < len(data) else None
        ann.train(data[np.sort(sample)] if sample is not None else data)
    else:
        raise ConfigError(f"unknown index backend {name!r}; choose one of {', '.join(BACKENDS)}")
    ann.add(data)
    return SearchBackend(name, params, embeddings, ann)


def load_backend(name: str, params: Mapping[str, int], embeddings: np.ndarray,
                 ann_path: Path | None) -> SearchBackend:
    """A backend from a stored index (``ann_path``: its faiss file, already verified)."""
    if name == "exact":
        return SearchBackend(name, params, embeddings)
    if name not in BACKENDS or ann_path is None:
        raise ConfigError(f"index backend {name!r} needs its faiss file")
    import faiss

    return SearchBackend(name, params, embeddings, faiss.read_index(str(ann_path)))
