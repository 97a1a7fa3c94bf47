"""Ranking metrics of text-based person retrieval (IRRA's protocol), exact and chunked.

Definitions, for each query with gallery similarities ``s`` (higher is better):

* gallery items are ordered by descending similarity; a non-relevant item that ties with a
  relevant one is ranked before it (pessimistic ties), so a degenerate model with constant scores
  earns nothing from the gallery order and the result never depends on sort implementation
  details (without ties it equals a full argsort);
* R@k is the percent of queries with a same-id image among the first k items (k is clipped to
  the gallery size, so a gallery of 4 images gives R@5 = R@10 = R@4);
* AP is the mean over the query's relevant images of (#relevant at or above it / its rank);
  mAP is the mean of AP over queries;
* INP is #relevant / rank of the last relevant image; mINP is its mean over queries.

Queries without any relevant image in the gallery have no defined AP or INP. They are excluded
from every metric, reported as ``num_skipped_queries`` and a warning is issued; if no query has
a relevant image a :class:`ValueError` is raised.

Instead of argsorting the full (queries x gallery) matrix, the rank of each relevant item is
counted directly (items scoring at least as high), in small query chunks that stay in cache.
Memory stays O(chunk x gallery) and the cost is O(#relevant x gallery) per query, which is far
cheaper than a sort when each identity has a handful of images.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def _as_tensor(x: torch.Tensor | np.ndarray | Sequence, name: str, dtype: torch.dtype) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ranking_metrics: `{name}` cannot be converted to a tensor: {exc}") from exc
    return t.detach().to("cpu", dtype)


def _relevant_table(query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery indices of each query's relevant images, padded with -1, and their counts.

    Built from a per-id table, so no (queries x gallery) comparison is needed.
    """
    uniq, g_inv = torch.unique(gallery_pids, return_inverse=True)
    per_id = torch.bincount(g_inv, minlength=uniq.numel())
    width = int(per_id.max())
    order = torch.argsort(g_inv, stable=True)
    starts = torch.cumsum(per_id, 0) - per_id
    slot = torch.arange(order.numel()) - starts[g_inv[order]]
    table = torch.full((uniq.numel() + 1, width), -1, dtype=torch.long)
    table[g_inv[order], slot] = order
    q_pos = torch.searchsorted(uniq, query_pids).clamp(max=uniq.numel() - 1)
    found = uniq[q_pos] == query_pids
    q_row = torch.where(found, q_pos, torch.full_like(q_pos, uniq.numel()))
    counts = torch.where(found, per_id[q_pos], torch.zeros_like(q_pos))
    return table[q_row], counts


def relevant_ranks(similarity: torch.Tensor, rel_index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each query's relevant items, ascending; padded slots are 0.

    ``similarity`` is (Q, G); ``rel_index`` (Q, N) holds the gallery indices of the relevant items
    (-1 padding) and ``counts`` (Q,) how many are valid. Ties between a relevant and a non-relevant
    item rank the non-relevant one first (pessimistic), so a degenerate model with constant scores
    gets no credit from the gallery order.
    """
    q, n = rel_index.shape
    valid = torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)
    scores = similarity.gather(1, rel_index.clamp(min=0))
    scores = scores.masked_fill(~valid, float("inf"))
    scores, _ = torch.sort(scores, dim=1, descending=False)
    # Ascending with padding (+inf) last -> flip the valid part to descending order.
    flip_index = (counts.unsqueeze(1) - 1 - torch.arange(n).unsqueeze(0)).clamp(min=0)
    scores = scores.gather(1, flip_index)
    # How many relevant items score >= each relevant score (self and ties included).
    rel_ge = ((scores.unsqueeze(1) >= scores.unsqueeze(2)) & valid.unsqueeze(1)).sum(2)
    # Rows with more relevant items first, so rows needing pass j are a prefix (views, no copies).
    order = torch.argsort(counts, descending=True, stable=True)
    sim_sorted = similarity.index_select(0, order)
    scores_sorted = scores.index_select(0, order)
    counts_sorted = counts.index_select(0, order)
    ge_all = torch.zeros(q, n, dtype=torch.int32)
    for j in range(n):
        m = int((counts_sorted > j).sum())
        if m == 0:
            break
        ge_all[:m, j] = torch.ge(sim_sorted[:m], scores_sorted[:m, j : j + 1]).sum(1, dtype=torch.int32)
    ge = torch.empty_like(ge_all).index_copy_(0, order, ge_all).long()
    position = torch.arange(1, n + 1).unsqueeze(0)
    ranks = ge - rel_ge + position
    return torch.where(valid, ranks, torch.zeros_like(ranks))


def ranking_metrics(
    similarity: torch.Tensor | np.ndarray | Sequence,
    query_pids: torch.Tensor | np.ndarray | Sequence,
    gallery_pids: torch.Tensor | np.ndarray | Sequence,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
    exclude_self: bool = False,
) -> dict[str, float]:
    """R@k, mAP and mINP (percent) of a (queries x gallery) similarity matrix.

    ``exclude_self``: query i is gallery item i (image-to-image retrieval in one set), left out of
    its own ranking: neither relevant nor ranked, so the gallery of each query is the other G - 1.

    Returns a dict with ``R1 R5 R10 mAP mINP`` (one ``R{k}`` per entry of ``ks``) and the counts
    ``num_queries``, ``num_gallery`` and ``num_skipped_queries`` (queries without a relevant image).
    """
    sim = _as_tensor(similarity, "similarity", torch.float32)
    qp = _as_tensor(query_pids, "query_pids", torch.long).reshape(-1)
    gp = _as_tensor(gallery_pids, "gallery_pids", torch.long).reshape(-1)
    if sim.dim() != 2:
        raise ValueError(f"ranking_metrics: similarity must be 2-D (queries x gallery), got shape {tuple(sim.shape)}")
    if sim.shape != (qp.numel(), gp.numel()):
        raise ValueError(
            f"ranking_metrics: similarity has shape {tuple(sim.shape)} but there are {qp.numel()} query pids "
            f"and {gp.numel()} gallery pids"
        )
    if sim.numel() == 0:
        raise ValueError("ranking_metrics: empty similarity matrix (no queries or no gallery images)")
    if not bool(torch.isfinite(sim).all()):
        raise ValueError("ranking_metrics: similarity contains NaN or infinite values")
    if any(k < 1 for k in ks):
        raise ValueError(f"ranking_metrics: every k must be >= 1, got {list(ks)}")
    num_q, num_g = sim.shape
    rel_index, rel_counts = _relevant_table(qp, gp)
    if exclude_self:
        if num_q != num_g or not bool(torch.equal(qp, gp)):
            raise ValueError("ranking_metrics: exclude_self needs the queries to be the gallery (same pids, in order)")
        sim = sim.clone()
        sim.fill_diagonal_(float("-inf"))           # below every real score: ranked after all others
        own = rel_index == torch.arange(num_q).unsqueeze(1)
        rel_index = rel_index.masked_fill(own, -1)
        rel_index = rel_index.gather(1, torch.argsort((rel_index < 0).to(torch.int8), dim=1, stable=True))
        rel_counts = rel_counts - own.sum(1)
        num_g -= 1

    hits = {k: 0 for k in ks}
    ap_sum = inp_sum = 0.0
    has_rel = rel_counts > 0
    skipped = int((~has_rel).sum())
    for start in range(0, num_q, chunk_size):
        keep = has_rel[start : start + chunk_size]
        s = sim[start : start + chunk_size]
        index = rel_index[start : start + chunk_size]
        counts = rel_counts[start : start + chunk_size]
        if not bool(keep.all()):
            s, index, counts = s[keep], index[keep], counts[keep]
        if s.shape[0] == 0:
            continue
        width = int(counts.max())
        ranks = relevant_ranks(s, index[:, :width], counts)
        valid = torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)
        first = ranks[:, 0]
        for k in ks:
            hits[k] += int((first <= min(k, num_g)).sum())
        position = torch.arange(1, width + 1, dtype=torch.float64).unsqueeze(0)
        precision = torch.where(valid, position / ranks.clamp(min=1).double(), torch.zeros((), dtype=torch.float64))
        ap_sum += float((precision.sum(1) / counts.double()).sum())
        last = ranks.gather(1, (counts - 1).unsqueeze(1)).squeeze(1)
        inp_sum += float((counts.double() / last.double()).sum())

    evaluated = num_q - skipped
    if evaluated == 0:
        raise ValueError(
            "ranking_metrics: no query has a relevant gallery image (query and gallery person ids never match)"
        )
    if skipped:
        warnings.warn(
            f"ranking_metrics: {skipped} of {num_q} queries have no relevant gallery image and are excluded",
            stacklevel=2,
        )
    out: dict[str, float] = {f"R{k}": 100.0 * hits[k] / evaluated for k in ks}
    out["mAP"] = 100.0 * ap_sum / evaluated
    out["mINP"] = 100.0 * inp_sum / evaluated
    out["num_queries"] = num_q
    out["num_gallery"] = num_g
    out["num_skipped_queries"] = skipped
    return out


def chance_ap(num_relevant: int, num_gallery: int) -> float:
    """Expected AP (a fraction) of a uniformly random ranking of ``num_gallery`` items, of which
    ``num_relevant`` are relevant: (H_N + (R-1)/(N-1) (N - H_N)) / N, with H_N the N-th harmonic
    number. The yardstick for "beats chance" on small or uneven galleries."""
    n, r = num_gallery, num_relevant
    if not 1 <= r <= n:
        raise ValueError(f"chance_ap: need 1 <= num_relevant <= num_gallery, got {r} of {n}")
    harmonic = sum(1.0 / k for k in range(1, n + 1))
    return (harmonic + (r - 1) / max(n - 1, 1) * (n - harmonic)) / n


def chance_metrics(query_pids: Sequence[int], gallery_pids: Sequence[int]) -> dict[str, float]:
    """Expected R1 and mAP (percent) of a random ranking for these queries and this gallery
    (queries without a relevant image excluded, as in :func:`ranking_metrics`)."""
    counts: dict[int, int] = {}
    for pid in gallery_pids:
        counts[int(pid)] = counts.get(int(pid), 0) + 1
    n = len(gallery_pids)
    relevant = [counts[int(p)] for p in query_pids if int(p) in counts]
    if not relevant:
        raise ValueError("chance_metrics: no query has a relevant image in the gallery")
    return {"R1": 100.0 * sum(k / n for k in relevant) / len(relevant),
            "mAP": 100.0 * sum(chance_ap(k, n) for k in relevant) / len(relevant)}
