"""Texts for IVT's multi-level alignment: phrase-level and word-level views of a caption.

IVT aligns an image with its full caption, with a phrase of it and with a few attribute words.
:func:`phrase_candidates` reproduces the official phrase heuristic; :func:`sample_phrase` and
:func:`word_level_text` draw one text per sample from a caller-supplied ``random.Random`` so that
data loading stays reproducible.
"""
from __future__ import annotations

import random
from typing import Sequence

MIN_PIECE_CHARS = 6


def _require_text(caption: str) -> None:
    if not caption or not caption.strip():
        raise ValueError("caption is empty; cannot derive alignment texts from it")


def _split_sentence(sentence: str) -> list[str]:
    """The longest comma piece of ``sentence`` and the other pieces re-joined with ",".

    Ties go to the first longest piece. Pieces are compared and filtered (more than 5
    characters) before stripping spaces, as the official code does.
    """
    pieces = sentence.split(",")
    longest = max(range(len(pieces)), key=lambda i: (len(pieces[i]), -i))
    before = ",".join(pieces[:longest])
    after = ",".join(pieces[longest + 1:])
    rest = f"{before},{after}".strip(",")
    return [p for p in (pieces[longest], rest) if len(p) >= MIN_PIECE_CHARS]


def phrase_candidates(caption: str) -> list[str]:
    """Phrase-level candidates of ``caption`` by the official IVT heuristic.

    The lower-cased caption is split on "." into sentences (outer periods removed first); each
    sentence gives its longest comma segment and the remaining segments re-joined with ","; pieces
    of 5 characters or fewer are dropped and the rest stripped of spaces. When nothing survives
    the lower-cased, stripped caption is the only candidate, so callers always get one.
    """
    _require_text(caption)
    text = caption.lower()
    result: list[str] = []
    for sentence in text.strip(".").split("."):
        result.extend(_split_sentence(sentence))
    result = [p.strip(" ") for p in result]
    result = [p for p in result if p]
    return result or [text.strip()]


def sample_phrase(caption: str, rng: random.Random) -> str:
    """One phrase-level candidate of ``caption``, drawn uniformly with ``rng``."""
    return rng.choice(phrase_candidates(caption))


def comma_clauses(caption: str) -> list[str]:
    """The comma pieces of the lower-cased caption longer than 5 characters, stripped of spaces.

    The official ICFG-PEDES / RSTPReid word-level text: outer periods and brackets removed, split
    into sentences on "." and each sentence on ","; the length test comes before stripping.
    """
    _require_text(caption)
    pieces = []
    for sentence in caption.lower().strip(".").strip("[").strip("]").split("."):
        pieces += [p for p in sentence.split(",") if len(p) >= MIN_PIECE_CHARS]
    return [p.strip(" ") for p in pieces if p.strip(" ")]


WORD_FALLBACKS = ("clauses", "phrases")


def word_level_attributes(attributes: Sequence[str], rng: random.Random) -> list[str]:
    """The attribute phrases of one word-level text: a random non-empty subset in random order
    (the official code samples k uniformly in 1..n, then k distinct keys); [] without any."""
    attrs = [a.strip() for a in attributes if a and a.strip()]
    if not attrs:
        return []
    return rng.sample(attrs, rng.randint(1, len(attrs)))


def word_level_text(attributes: Sequence[str], caption: str, rng: random.Random,
                    fallback: str = "clauses") -> str:
    """The word-level alignment text of one caption.

    With attribute phrases (the caption's own ``att``): a random non-empty subset of them, in
    random order, joined with "," (the official code samples k uniformly in 1..n, then k distinct
    keys). Without: one random candidate of ``fallback``: ``clauses`` (:func:`comma_clauses`, the
    official ICFG-PEDES / RSTPReid loaders) or ``phrases`` (:func:`phrase_candidates`, what the
    official CUHK-PEDES loader uses for a caption whose ``att`` is empty); the lower-cased caption
    when there is none. Never empty; a blank caption without attributes is an error.
    """
    attrs = word_level_attributes(attributes, rng)
    if attrs:
        return ",".join(attrs)
    if fallback not in WORD_FALLBACKS:
        raise ValueError(f"fallback must be one of {WORD_FALLBACKS}, got {fallback!r}")
    candidates = comma_clauses(caption) if fallback == "clauses" else phrase_candidates(caption)
    return rng.choice(candidates) if candidates else caption.lower().strip()
