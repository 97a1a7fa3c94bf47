"""Contradicting captions: one attribute word of a caption replaced by another of its kind.

"A man in a red jacket and black jeans" becomes "a man in a *blue* jacket and black jeans": a text
that no longer matches the image it describes, yet differs from its caption in one word, as the
right person's look-alike differs from them in one garment or colour. Whether a model scores an
image's caption above such an edit measures whether it reads that word at all, or reads the
caption as a bag of colours (``benchmarks/rerank_headroom.py``). The word groups are plain English
pedestrian vocabulary (CUHK-PEDES, ICFG-PEDES and SynthPedes captions use it alike); words of one
class (``grey``/``gray``, ``sneakers``/``trainers``) are synonyms and never replace each other.
No library offers this: it is a word list and one regular expression.
"""
from __future__ import annotations

import re

import torch

# group -> classes of synonyms; a word is replaced by a word of another class of its group.
GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "colour": (("black",), ("white",), ("grey", "gray"), ("red",), ("blue",), ("navy",), ("green",),
               ("yellow",), ("pink",), ("purple",), ("brown",), ("orange",), ("beige", "khaki", "tan")),
    "hair": (("black", "dark"), ("brown",), ("blonde", "blond"), ("grey", "gray", "white", "silver"),
             ("red", "ginger")),                  # a colour right before "hair"
    "length": (("long",), ("short",)),
    "upper": (("t-shirt", "tee"), ("shirt",), ("blouse",), ("sweater", "jumper", "pullover"),
              ("hoodie",), ("jacket",), ("coat", "overcoat"), ("dress",), ("vest",)),
    "lower": (("jeans",), ("trousers", "pants", "slacks"), ("shorts",), ("skirt",)),
    "shoes": (("sneakers", "trainers"), ("boots",), ("sandals",), ("loafers",), ("heels",)),
    "bag": (("backpack", "rucksack", "knapsack"), ("handbag", "purse"), ("tote",)),
    "headwear": (("cap",), ("hat",), ("beanie",)),
}
_CLASS_OF = {word: (group, i) for group, classes in GROUPS.items() if group != "hair"
             for i, words in enumerate(classes) for word in words}
_HAIR_CLASS_OF = {word: i for i, words in enumerate(GROUPS["hair"]) for word in words}
_WORD = re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, {**_CLASS_OF, **_HAIR_CLASS_OF}), key=len,
                                                          reverse=True)) + r")(?![\w-])", re.IGNORECASE)
_HAIR = re.compile(r"\s+hair\b", re.IGNORECASE)


def word_class(text: str, match: re.Match) -> tuple[str, int] | None:
    """(group, class) of an attribute word found in ``text``: a colour right before "hair" is a
    hair colour (replaced only by hair colours, so no "navy hair"); None for a word that is no
    attribute there (as "dark" anywhere but before "hair")."""
    word = match.group(1).lower()
    own = _CLASS_OF.get(word)
    if _HAIR.match(text, match.end()) and (own is None or own[0] == "colour"):
        return ("hair", _HAIR_CLASS_OF[word]) if word in _HAIR_CLASS_OF else None
    return own


def attribute_words(text: str) -> list[re.Match]:
    """The replaceable attribute words of ``text``, in order."""
    return [m for m in _WORD.finditer(text) if word_class(text, m) is not None]


def contradict(text: str, generator: torch.Generator) -> str | None:
    """``text`` with one of its attribute words (drawn uniformly) replaced by a word of another
    class of the same group (drawn uniformly), or None when it has none. Draws use ``generator``
    only: the same seed gives the same edits."""
    words = attribute_words(text)
    if not words:
        return None
    hit = words[int(torch.randint(len(words), (1,), generator=generator))]
    group, own = word_class(text, hit)
    others = [c for i, c in enumerate(GROUPS[group]) if i != own]
    new = others[int(torch.randint(len(others), (1,), generator=generator))][0]
    if hit.group(1)[0].isupper():
        new = new[0].upper() + new[1:]
    return text[:hit.start()] + new + text[hit.end():]
