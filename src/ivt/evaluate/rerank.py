"""Two-stage ranking: the dual-encoder cosine picks each query's top K, the image-text matching
head (a joint pass of IVT's own blocks over the text and each candidate) re-scores them.

The IRRA protocol is unchanged: a query's top K are re-ordered among themselves, everything below
K keeps its cosine order, and the metrics are computed on that ranking. The top K are ordered by
both scores together (:func:`fuse`): on held-out draws the ITM log-odds alone moved R1 by -1.1 to
+1.4 against the cosine, their standardised sum by +0.8 to +1.6 (benchmarks/RESULTS.md, section
rerank-budget).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ivt.inference import RetrievalModel


def fuse(match: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
    """The re-ranking score of each query's candidates (last dim): the ITM log-odds and the cosine,
    each standardised over the candidates (zero mean, unit spread), summed.

    The two scales are unrelated (log-odds span tens, cosines of a top K differ by hundredths), so
    a plain sum lets one decide alone; standardising within the candidates weighs them equally
    with no weight to tune per model (CombSUM of z-scores). A score that does not vary among the
    candidates (one candidate, equal cosines) adds nothing.
    """
    def standard(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        centred = x - x.mean(dim=-1, keepdim=True)
        spread = x.std(dim=-1, correction=0, keepdim=True)
        return torch.where(spread > 1e-6, centred / spread.clamp(min=1e-6), torch.zeros_like(centred))

    if match.shape != cosine.shape:
        raise ValueError(f"match scores {tuple(match.shape)} and cosines {tuple(cosine.shape)} differ in shape")
    return standard(match) + standard(cosine)


def rerank_scores(model: RetrievalModel, similarity: torch.Tensor, texts: Sequence[str],
                  image_states: torch.Tensor, k: int, chunk: int = 64, by: str = "fused") -> torch.Tensor:
    """(Q, G) scores ranking each query's top ``k`` (by ``similarity``) above the rest (in cosine
    order), ordered by ``by``: ``fused`` (:func:`fuse`, what every ranking path uses) or ``itm`` (the
    ITM log-odds alone, for comparison). ``texts`` are the Q queries, ``image_states`` the gallery's
    cached states (:meth:`RetrievalModel.encode_images_with_states`)."""
    model.require_rerank()
    if k < 1:
        raise ValueError(f"rerank k must be >= 1, got {k}")
    if by not in ("fused", "itm"):
        raise ValueError(f"rerank by must be 'fused' or 'itm', got {by!r}")
    if similarity.shape != (len(texts), len(image_states)):
        raise ValueError(f"similarity {tuple(similarity.shape)} does not fit {len(texts)} texts x "
                         f"{len(image_states)} images")
    k = min(k, similarity.shape[1])
    out = similarity.float().clone()
    top = similarity.topk(k, dim=1).indices
    for start in range(0, len(texts), chunk):
        rows = range(start, min(start + chunk, len(texts)))
        _, text_states, text_mask = model.encode_texts_with_states([texts[q] for q in rows])
        index = top[start:start + len(rows)]                       # (n, k)
        scores = model.match_scores(image_states[index.flatten()],
                                    text_states.repeat_interleave(k, dim=0),
                                    text_mask.repeat_interleave(k, dim=0)).view(len(rows), k)
        if by == "fused":
            scores = fuse(scores, similarity[start:start + len(rows)].float().gather(1, index))
        # Above every cosine (<= 1), in the new order: a shift per query keeps the order exact.
        shifted = scores - scores.min(dim=1, keepdim=True).values + 2.0
        out[start:start + len(rows)].scatter_(1, index, shifted)
    return out
