"""Find this person: ranking a gallery by an example image of someone, the way image-to-image
retrieval measured best (`benchmarks/same_person.py`, chosen on draws never reported).

1. **Camera centring.** Every embedding (the query's too) minus the mean embedding of its camera's
   items, normalised again. A camera's colour cast, light and background are shared by everyone it
   sees, so raw embeddings make strangers under one camera look alike and the same person under two
   cameras look apart. Items without a camera (plain images) form one group; a query from a file
   (camera unknown) is centred on the mean of the whole gallery.
2. **k-reciprocal re-ranking** (Zhong et al., CVPR 2017) of the best ``candidates`` by the centred
   cosine: two images are close when their sets of k-reciprocal nearest neighbours overlap (Jaccard
   distance), blended with the plain distance. Below the candidates, centred-cosine order.

Written by hand: no maintained library has k-reciprocal re-ranking (the authors' and every ReID
toolbox's copy is a NumPy function over a whole distance matrix, which an index cannot afford; here it
runs on the query and its candidates only, at most ``candidates + 1`` points). Text queries are not
touched: centring lowered text-to-image retrieval (section i2i-centring).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

NO_CAMERA = ""      # the group of items that have no camera (images outside videos)


@dataclass(frozen=True)
class SamePersonSettings:
    """How an example image ranks a gallery (the defaults were chosen on SynthPedes draws 6001-6004;
    ``candidates`` = 0 turns re-ranking off, ``centre`` = False the centring). ``pool``: how many
    plain-cosine candidates an index re-scores camera-centred (an index cannot centre every item per
    query; `benchmarks/same_person.py` measures what the pool holds of the exact centred top 50)."""

    pool: int = 400
    centre: bool = True
    candidates: int = 50
    k1: int = 3
    k2: int = 3
    lam: float = 0.6


@dataclass(frozen=True)
class CameraMeans:
    """The mean embedding of each camera's items (``NO_CAMERA`` for items without one) and of all."""

    means: Mapping[str, np.ndarray]
    overall: np.ndarray

    @classmethod
    def of(cls, embeddings: np.ndarray, cameras: Sequence[str]) -> CameraMeans:
        """The means of ``embeddings`` (N, D) grouped by each row's camera name."""
        names, codes = np.unique(np.asarray(list(cameras), dtype=str), return_inverse=True)
        return cls.of_codes(embeddings, codes.reshape(-1), [str(n) for n in names])

    @classmethod
    def of_codes(cls, embeddings: np.ndarray, codes: np.ndarray, names: Sequence[str],
                 chunk: int = 65536) -> CameraMeans:
        """The means of ``embeddings`` (N, D) grouped by ``codes`` (N,), indexes into ``names``; read
        in chunks, so a memory-mapped index is never copied whole."""
        codes = np.asarray(codes, dtype=np.int64)
        sums = np.zeros((len(names), embeddings.shape[1]))
        for start in range(0, len(codes), chunk):
            block = np.asarray(embeddings[start:start + chunk], dtype=np.float64)
            part = codes[start:start + chunk]
            for code in np.unique(part):
                sums[code] += block[part == code].sum(0)
        counts = np.bincount(codes, minlength=len(names))
        kept = [i for i in range(len(names)) if counts[i]]
        return cls.from_sums({names[i]: sums[i] for i in kept}, {names[i]: int(counts[i]) for i in kept})

    @classmethod
    def from_sums(cls, sums: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> CameraMeans:
        """The means from per-camera sums and counts (an index that is read in batches)."""
        total = sum(counts.values())
        means = {c: (np.asarray(s, dtype=np.float64) / counts[c]).astype(np.float32)
                 for c, s in sums.items() if counts[c]}
        if not total:
            raise ValueError("camera means of no embeddings")
        overall = sum(np.asarray(s, dtype=np.float64) for s in sums.values()) / total
        return cls(means, np.asarray(overall, dtype=np.float32))

    def centred(self, vectors: np.ndarray, cameras: Sequence[str | None]) -> np.ndarray:
        """``vectors`` (N, D) minus their cameras' means (the overall mean for ``None`` or a camera
        this gallery has no items of), L2-normalised again."""
        v = np.asarray(vectors, dtype=np.float32)
        shift = np.stack([self.overall if c is None else self.means.get(c, self.overall) for c in cameras]
                         ) if len(cameras) else np.zeros_like(v)
        z = v - shift
        norm = np.linalg.norm(z, axis=1, keepdims=True)
        return z / np.maximum(norm, 1e-12)


def k_reciprocal_distance(x: np.ndarray, k1: int = 3, k2: int = 3, lam: float = 0.6) -> np.ndarray:
    """The k-reciprocal re-ranked distance (Zhong et al. 2017) of row 0 of ``x`` (n, D), unit rows,
    to every row: (1 - lam) * Jaccard distance of the k-reciprocal neighbour sets + lam * the
    squared-Euclidean distance scaled by row 0's largest. Lower is closer."""
    dist = np.maximum(2.0 - 2.0 * (x @ x.T).astype(np.float64), 0.0)
    dist = dist / np.maximum(dist.max(axis=1, keepdims=True), 1e-12)
    rank = np.argsort(dist, axis=1, kind="stable")
    mine = _reciprocal(rank, k1)                      # mine[i, j]: j is a k1-reciprocal neighbour of i
    theirs = _reciprocal(rank, int(np.around(k1 / 2.0)))
    # Expansion: a neighbour's own (k1/2)-reciprocal set joins when more than 2/3 of it is in mine.
    overlap = theirs.astype(np.int64) @ mine.T.astype(np.int64)     # overlap[c, i] = |theirs[c] & mine[i]|
    joins = mine & (overlap.T > 2.0 / 3.0 * theirs.sum(axis=1)[None, :])
    expanded = mine | ((joins.astype(np.int64) @ theirs.astype(np.int64)) > 0)
    weights = np.where(expanded, np.exp(-dist), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    if k2 > 1:
        weights = weights[rank[:, :k2]].mean(axis=1)
    shared = np.minimum(weights[0][None, :], weights).sum(axis=1)
    jaccard = 1.0 - shared / (2.0 - shared)
    return (1.0 - lam) * jaccard + lam * dist[0]


def _reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """(n, n) bool: j among i's k+1 nearest (itself included) and i among j's."""
    n = len(rank)
    near = np.zeros((n, n), dtype=bool)
    near[np.arange(n)[:, None], rank[:, :k + 1]] = True
    return near & near.T


def same_person_order(query: np.ndarray, vectors: np.ndarray, settings: SamePersonSettings = SamePersonSettings()
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The order of ``vectors`` (N, D; already centred when centring is on, as ``query`` (D,)) for
    the query, best first, and their cosines with it: the best ``settings.candidates`` re-ranked
    k-reciprocally, the rest by cosine (ties: lower row first)."""
    v = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    scores = v @ q
    order = np.argsort(-scores, kind="stable")
    m = min(settings.candidates, len(order))
    if m >= 2:
        top = order[:m]
        distance = k_reciprocal_distance(np.vstack([q[None], v[top]]), settings.k1, settings.k2, settings.lam)[1:]
        order = np.concatenate([top[np.argsort(distance, kind="stable")], order[m:]])
    return order, scores
