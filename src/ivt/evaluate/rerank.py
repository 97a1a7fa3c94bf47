"""Two-stage ranking: the dual-encoder cosine picks each query's top K, the image-text matching
head (a joint pass of IVT's own blocks over the text and each candidate) re-scores them.

The IRRA protocol is unchanged: a query's top K are re-ordered among themselves, everything below
K keeps its cosine order, and the metrics are computed on that ranking. The top K are ordered by
both scores together (:func:`fuse`), the head weighted as its training run chose on validation
(:func:`choose_weight`): on held-out draws the ITM log-odds alone moved R1 by -4.4 to +1.4
against the cosine, the weighted fusion by -0.5 to +1.3 (8 CPU runs; benchmarks/RESULTS.md,
section rerank-budget).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ivt.inference import RetrievalModel

#: Weights of the ITM log-odds against the cosine tried on the validation split (0: the cosine
#: order, re-ranking changes nothing), and the candidates per query they are tried on.
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
CHOOSE_K = 16


def fuse(match: torch.Tensor, cosine: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """The re-ranking score of each query's candidates (last dim): the ITM log-odds and the cosine,
    each standardised over the candidates (zero mean, unit spread), the log-odds times ``weight``,
    summed.

    The two scales are unrelated (log-odds span tens, cosines of a top K differ by hundredths), so
    a plain sum lets one decide alone; standardised, ``weight`` says how much the head counts
    against the cosine (a training run chooses it on its validation split: :func:`choose_weight`;
    CombSUM of z-scores). A score that does not vary among the candidates (one candidate, equal
    cosines) adds nothing.
    """
    def standard(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        centred = x - x.mean(dim=-1, keepdim=True)
        spread = x.std(dim=-1, correction=0, keepdim=True)
        return torch.where(spread > 1e-6, centred / spread.clamp(min=1e-6), torch.zeros_like(centred))

    if match.shape != cosine.shape:
        raise ValueError(f"match scores {tuple(match.shape)} and cosines {tuple(cosine.shape)} differ in shape")
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"the weight of the match scores must be a finite number >= 0, got {weight!r}")
    return weight * standard(match) + standard(cosine)


def top_matches(model: RetrievalModel, similarity: torch.Tensor, texts: Sequence[str], image_states: torch.Tensor,
                k: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's top ``k`` images by ``similarity`` (Q, k) and their ITM log-odds (Q, k):
    ``texts`` are the Q queries, ``image_states`` the gallery's cached states
    (:meth:`RetrievalModel.encode_images_with_states`)."""
    model.require_rerank()
    if k < 1:
        raise ValueError(f"rerank k must be >= 1, got {k}")
    if similarity.shape != (len(texts), len(image_states)):
        raise ValueError(f"similarity {tuple(similarity.shape)} does not fit {len(texts)} texts x "
                         f"{len(image_states)} images")
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices
    match = torch.empty(len(texts), k)
    for start in range(0, len(texts), chunk):
        rows = slice(start, min(start + chunk, len(texts)))
        _, text_states, text_mask = model.encode_texts_with_states(list(texts[rows]))
        index = top[rows]
        match[rows] = model.match_scores(image_states[index.flatten()], text_states.repeat_interleave(k, dim=0),
                                         text_mask.repeat_interleave(k, dim=0)).view(len(index), k)
    return top, match


def rerank_scores(model: RetrievalModel, similarity: torch.Tensor, texts: Sequence[str],
                  image_states: torch.Tensor, k: int, chunk: int = 64, by: str = "fused",
                  weight: float | None = None) -> torch.Tensor:
    """(Q, G) scores ranking each query's top ``k`` (by ``similarity``) above the rest (in cosine
    order), ordered by ``by``: ``fused`` (:func:`fuse` with ``weight``, by default the one the
    model's training chose; what every ranking path uses) or ``itm`` (the ITM log-odds alone, for
    comparison). ``texts`` and ``image_states`` as :func:`top_matches`."""
    if by not in ("fused", "itm"):
        raise ValueError(f"rerank by must be 'fused' or 'itm', got {by!r}")
    top, match = top_matches(model, similarity, texts, image_states, k, chunk)
    out = similarity.float().clone()
    if by == "fused":
        match = fuse(match, out.gather(1, top), model.rerank_weight if weight is None else weight)
    # Above every cosine (<= 1), in the new order: a shift per query keeps the order exact.
    out.scatter_(1, top, match - match.min(dim=1, keepdim=True).values + 2.0)
    return out


def choose_weight(match: torch.Tensor, cosine: torch.Tensor, relevant: torch.Tensor,
                  weights: Sequence[float] = WEIGHTS) -> tuple[float, dict[float, float]]:
    """The weight of :func:`fuse` that puts a relevant image first for the most queries (their R1;
    a tie goes to the smaller weight, the one nearer the cosine order), and the R1 of each weight.
    ``match``, ``cosine`` and ``relevant`` (bool) are (Q, K): each query's top K candidates."""
    if not len(match):
        raise ValueError("no queries to choose a re-ranking weight on")
    r1 = {float(w): 100 * relevant.gather(1, fuse(match, cosine, w).argmax(dim=1, keepdim=True)).float().mean().item()
          for w in weights}
    best = max(r1, key=lambda w: (r1[w], -w))
    return best, r1


def choose_weight_on(model: RetrievalModel, texts: Sequence[str], text_pids: torch.Tensor, text_emb: torch.Tensor,
                     images: torch.Tensor, image_pids: torch.Tensor, image_emb: torch.Tensor,
                     k: int = CHOOSE_K) -> tuple[float, dict[float, float]]:
    """:func:`choose_weight` on a split: its captions, uint8 images, their identities and
    embeddings (what a training run's validation has at hand to choose its re-ranking weight)."""
    similarity = text_emb @ image_emb.T
    _, states = model.encode_images_with_states(images)
    top, match = top_matches(model, similarity, texts, states, k)
    relevant = image_pids[top] == text_pids[:, None]
    return choose_weight(match, similarity.float().gather(1, top), relevant)
