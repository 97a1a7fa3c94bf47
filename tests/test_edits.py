"""Contradicting captions (ivt.text.edits): one attribute word replaced by another of its kind."""
from __future__ import annotations

import pytest
import torch

from ivt.text.edits import attribute_words, contradict, word_class

CAPTION = ("A man with short black hair is wearing a red t-shirt, grey jeans and white sneakers. "
           "He carries a navy backpack and has a cap on his head.")


def _classes(text: str) -> list[tuple[str, str, tuple[str, int]]]:
    """(position, word, (group, class)) of every attribute word of ``text``."""
    return [(m.start(), m.group(1), word_class(text, m)) for m in attribute_words(text)]


def test_one_word_changes_to_another_class_of_its_group() -> None:
    g = torch.Generator().manual_seed(0)
    before = _classes(CAPTION)
    seen = set()
    for _ in range(300):
        out = contradict(CAPTION, g)
        after = _classes(out)
        assert len(after) == len(before)
        changed = [(a, b) for a, b in zip(before, after) if a[1] != b[1]]
        assert len(changed) == 1
        (at, old, (g_old, c_old)), (_, new, (g_new, c_new)) = changed[0]
        assert g_old == g_new and c_old != c_new        # same kind, never a synonym
        assert out[:at] == CAPTION[:at] and out[at + len(new):] == CAPTION[at + len(old):]
        seen.add((old, g_old))
    assert seen == {("short", "length"), ("black", "hair"), ("red", "colour"), ("t-shirt", "upper"),
                    ("grey", "colour"), ("jeans", "lower"), ("white", "colour"), ("sneakers", "shoes"),
                    ("navy", "colour"), ("backpack", "bag"), ("cap", "headwear")}


def test_hair_colours_stay_hair_colours() -> None:
    g = torch.Generator().manual_seed(2)
    outs = {contradict("long blonde hair", g) for _ in range(200)}
    assert {o.split()[1] for o in outs if o.split()[0] == "long"} == {"black", "brown", "grey", "red"}
    assert [m.group(1) for m in attribute_words("navy hair")] == []          # no hair colour: left alone
    assert [m.group(1) for m in attribute_words("dark jeans")] == ["jeans"]  # "dark" names hair only


def test_whole_words_only_and_case_kept() -> None:
    assert attribute_words("a tee-shirt, shortly after, the capital of redness") == []
    assert [m.group(1) for m in attribute_words("Red T-shirt and BLUE shorts")] == ["Red", "T-shirt", "BLUE", "shorts"]
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        out = contradict("Red", g)
        assert out[0].isupper() and out != "Red"


def test_none_without_attribute_words_and_deterministic() -> None:
    assert contradict("The person is walking down the street.", torch.Generator().manual_seed(0)) is None
    a = [contradict(CAPTION, torch.Generator().manual_seed(s)) for s in range(20)]
    b = [contradict(CAPTION, torch.Generator().manual_seed(s)) for s in range(20)]
    assert a == b and len(set(a)) > 5


@pytest.mark.parametrize("word", ["grey", "gray"])
def test_synonyms_never_replace_each_other(word: str) -> None:
    g = torch.Generator().manual_seed(1)
    outs = {contradict(f"a {word} one", g).split()[1] for _ in range(100)}
    assert outs and not outs & {"grey", "gray"}
