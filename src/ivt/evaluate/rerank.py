"""Two-stage ranking: the dual-encoder cosine picks each query's top K, the image-text matching
head (a joint pass of IVT's own blocks over the text and each candidate) orders them.

The IRRA protocol is unchanged: a query's top K are re-ordered among themselves by their ITM
score, everything below K keeps its cosine order, and the metrics are computed on that ranking.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ivt.inference import RetrievalModel


def rerank_scores(model: RetrievalModel, similarity: torch.Tensor, texts: Sequence[str],
                  image_states: torch.Tensor, k: int, chunk: int = 64) -> torch.Tensor:
    """(Q, G) scores ranking each query's top ``k`` (by ``similarity``) in ITM order above the rest
    (in cosine order): ``texts`` are the Q queries, ``image_states`` the gallery's cached states
    (:meth:`RetrievalModel.encode_images_with_states`)."""
    model.require_rerank()
    if k < 1:
        raise ValueError(f"rerank k must be >= 1, got {k}")
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
        # Above every cosine (<= 1), in ITM order: a shift per query keeps the order exact.
        shifted = scores - scores.min(dim=1, keepdim=True).values + 2.0
        out[start:start + len(rows)].scatter_(1, index, shifted)
    return out
