"""Training samples as the official loaders build them: per-caption att, word-level fallbacks, the
identity sampler that shows every caption once per epoch."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from ivt.config import load_config
from ivt.data import load_dataset
from ivt.errors import ConfigError
from ivt.text.phrases import comma_clauses, phrase_candidates
from ivt.train.batches import EpochSampler, build_samples, level_text

CUHK_ATT = {
    "train": [
        {"id": 7, "file_path": "a.png", "captions": "A man in a grey coat, black pants.",
         "att": {"1": "grey coat", "2": "black pants"}},
        {"id": 7, "file_path": "a.png", "captions": "The man wears white shoes, a red hat.",
         "att": {"5": "white shoes"}},
        {"id": 8, "file_path": "b.png", "captions": "A woman with a long skirt, holding a phone.", "att": {}},
    ],
    "val": [{"id": 20, "file_path": "v.png", "captions": "val caption", "att": {}}],
    "test": [{"id": 30, "file_path": "t.png", "captions": "test caption", "att": {}}],
}


def test_each_caption_keeps_its_own_att(tmp_path):
    (tmp_path / "cuhk_pedes_att.json").write_text(json.dumps(CUHK_ATT))
    ds = load_dataset(tmp_path)
    a = ds.split("train")[0]
    assert a.attributes == ("grey coat", "black pants", "white shoes")  # the union, for statistics
    assert a.caption_attributes == (("grey coat", "black pants"), ("white shoes",))
    _, samples = build_samples(ds, ds.split("train"))
    assert [s.attributes for s in samples] == [("grey coat", "black pants"), ("white shoes",), ()]
    rng = random.Random(0)
    first = {level_text("word", samples[0], rng)[0] for _ in range(200)}
    assert first == {"grey coat", "black pants", "grey coat,black pants", "black pants,grey coat"}
    assert {level_text("word", samples[1], rng)[0] for _ in range(20)} == {"white shoes"}
    # An empty att falls back to the phrase heuristic, as the official CUHK-PEDES loader does.
    third = {level_text("word", samples[2], rng)[0] for _ in range(200)}
    assert third == set(phrase_candidates(samples[2].caption))


def test_without_att_the_word_level_is_a_comma_clause(tmp_path):
    rows = [{"id": 1, "img_path": "x.jpg", "split": "train",
             "captions": ["A tall man in a dark jacket, jeans, carrying a backpack. He has short hair."]},
            {"id": 2, "img_path": "y.jpg", "split": "test", "captions": ["Someone."]}]
    (tmp_path / "data_captions.json").write_text(json.dumps(rows))
    ds = load_dataset(tmp_path)
    _, samples = build_samples(ds, ds.split("train"))
    rng = random.Random(3)
    drawn = {level_text("word", samples[0], rng)[0] for _ in range(200)}
    assert drawn == set(comma_clauses(samples[0].caption)) == {
        "a tall man in a dark jacket", "jeans", "carrying a backpack", "he has short hair"}  # " jeans": 6 chars


PIDS = [0] * 5 + [1] * 2 + [2] * 9 + [3] * 4 + [4] * 1 + [5] * 6 + [6] * 4


def test_identity_all_shows_every_caption_once_in_chunks_of_k():
    sampler = EpochSampler(PIDS, batch_size=4, seed=0, mode="identity-all", k=2)
    chunks_per_id = {0: 2, 1: 1, 2: 4, 3: 2, 4: 1, 5: 3, 6: 2}
    assert len(sampler) == sum(chunks_per_id.values()) // 2 == 7
    for epoch in range(3):
        batches = sampler.epoch(epoch)
        assert len(batches) == 7 and all(len(b) == 4 for b in batches)
        flat = [i for b in batches for i in b]
        chunks = [flat[i:i + 2] for i in range(0, len(flat), 2)]
        assert all(PIDS[c[0]] == PIDS[c[1]] for c in chunks)  # K captions of one id
        shown = Counter(PIDS[c[0]] for c in chunks)  # 14 of the 15 chunks: one does not fill a batch
        assert sum(shown.values()) == 14 and all(shown[p] <= n for p, n in chunks_per_id.items())
        repeated = [i for i, n in Counter(flat).items() if n > 1]
        assert all(PIDS[i] == 4 for i in repeated)  # only the id with fewer than K captions repeats
    assert sampler.epoch(1) == sampler.epoch(1) and sampler.epoch(1) != sampler.epoch(2)


def test_identity_all_batches_have_distinct_ids_while_enough_remain():
    pids = [p for p in range(40) for _ in range(4 + p % 5)]
    sampler = EpochSampler(pids, batch_size=28, seed=1, mode="identity-all", k=4)
    batches = sampler.epoch(0)
    distinct = [len({pids[i] for i in b}) for b in batches]
    assert distinct[:-2].count(7) == len(distinct) - 2  # the official loop: 7 different ids x 4 captions
    assert len(sampler) == sum(max(n, 4) // 4 for n in Counter(pids).values()) // 7


def test_sampler_settings_are_checked_with_the_config():
    with pytest.raises(ConfigError, match="identity-all"):
        load_config(None, ["train.sampler=pk"])
    with pytest.raises(ConfigError, match="multiple of train.k_per_id"):
        load_config(None, ["train.sampler=identity-all", "train.batch_size=28", "train.k_per_id=3"])
