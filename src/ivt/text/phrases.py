"""Texts for IVT's multi-level alignment: phrase-level and word-level views of a caption.

IVT aligns an image with its full caption, with a phrase of it and with a few attribute words.
:func:`phrase_candidates` reproduces the official phrase heuristic; :func:`sample_phrase` and
:func:`word_level_text` draw one text per sample from a caller-supplied ``random.Random`` so that
data loading stays reproducible.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

MIN_PIECE_CHARS = 6
MIN_CLAUSE_WORDS = 2
FALLBACK_WORDS = 4

_CLAUSE_SPLIT = re.compile(r"[.,;:!?]|\band\b")


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


def caption_clauses(caption: str) -> list[str]:
    """Lower-cased clauses of ``caption`` separated by punctuation or "and", of 2+ words."""
    _require_text(caption)
    parts = (" ".join(p.split()) for p in _CLAUSE_SPLIT.split(caption.lower()))
    return [p for p in parts if len(p.split()) >= MIN_CLAUSE_WORDS]


def word_level_attributes(attributes: Sequence[str], rng: random.Random) -> list[str]:
    """The attribute phrases of one word-level text: a random non-empty subset in random order
    (the official code samples k uniformly in 1..n, then k distinct attributes); [] without any."""
    attrs = [a.strip() for a in attributes if a and a.strip()]
    if not attrs:
        return []
    return rng.sample(attrs, rng.randint(1, len(attrs)))


def word_level_text(attributes: Sequence[str], caption: str, rng: random.Random) -> str:
    """The word-level alignment text of one sample.

    With attribute phrases: a random non-empty subset of them, in random order, joined with ", "
    (the official code samples k uniformly in 1..n, then k distinct attributes). Without: one
    random short clause of the caption (see :func:`caption_clauses`), or its first few words
    when no clause has two words. Never empty; a blank caption without attributes is an error.
    """
    attrs = word_level_attributes(attributes, rng)
    if attrs:
        return ", ".join(attrs)
    clauses = caption_clauses(caption)
    if clauses:
        return rng.choice(clauses)
    words = caption.lower().split()
    return " ".join(words[:FALLBACK_WORDS])
