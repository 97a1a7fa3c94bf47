"""Training batches: MLA texts and their positives, the look-alike sampler, per-level chunks."""
from __future__ import annotations

import random

import torch

from ivt.text.phrases import word_level_text
from ivt.train.batches import EpochSampler, Sample, attribute_positives, level_text, pair_texts

SAMPLES = [
    Sample(0, 0, "A man in a red shirt and blue jeans. He wears glasses.", ("red shirt", "blue jeans", "glasses")),
    Sample(1, 1, "A woman in a red shirt and a black skirt.", ("red shirt", "black skirt")),
    Sample(2, 2, "A man in a green coat with glasses.", ("green coat", "glasses")),
]


def test_word_level_text_is_unchanged_and_reports_its_attributes():
    for seed in range(30):
        text, attrs = level_text("word", SAMPLES[0], random.Random(seed))
        assert text == word_level_text(SAMPLES[0].attributes, SAMPLES[0].caption, random.Random(seed))
        assert attrs == frozenset(text.split(","))
    assert level_text("sentence", SAMPLES[1], random.Random(0)) == (SAMPLES[1].caption, None)
    no_attrs = Sample(0, 0, "A man in a red shirt and blue jeans.", ())
    assert level_text("word", no_attrs, random.Random(0))[1] is None


def test_attribute_positives_add_images_that_show_every_word():
    pairs = pair_texts(SAMPLES, [0, 1, 2], ["word", "sentence"], seed=0, epoch=0)
    pairs.text_attributes[:3] = [frozenset({"red shirt"}), frozenset({"red shirt", "black skirt"}),
                                 frozenset({"glasses"})]
    mask = attribute_positives(pairs)  # rows images, columns texts; 6 x 6
    assert mask.diagonal().all()
    assert mask[0, 0] and mask[1, 0] and not mask[2, 0]          # "red shirt": images 0 and 1
    assert mask[1, 1] and not mask[0, 1]                          # "red shirt, black skirt": image 1 only
    assert mask[0, 2] and mask[2, 2] and not mask[1, 2]           # "glasses": images 0 and 2
    assert torch.equal(mask[:, 3:], (pairs.labels[:, None] == pairs.labels[None, 3:]))  # sentences: identity
    assert mask[3, 0] and mask[4, 0]                               # the sentence-level views too


def test_similar_sampler_groups_look_alikes():
    # 8 ids: pairs (0,1), (2,3), ... share all but one attribute; nothing is shared across pairs.
    attrs = {p: {f"a{p // 2}", f"b{p // 2}", f"c{p // 2}", f"x{p}"} for p in range(8)}
    pids = [p for p in range(8) for _ in range(2)]
    sampler = EpochSampler(pids, 8, seed=0, mode="similar", k=2, attributes=[attrs[p] for p in pids], group=2)
    assert len(sampler) == 2
    for epoch in range(3):
        batches = sampler.epoch(epoch)
        for batch in batches:
            ids = [pids[i] for i in batch]
            groups = [ids[j:j + 4] for j in range(0, 8, 4)]  # 2 look-alikes x K=2 captions
            for g in groups:
                assert len({p // 2 for p in g}) == 1, ids
        assert sorted(pids[i] for b in batches for i in b) == sorted(pids)


def test_texts_by_level_follow_the_levels():
    pairs = pair_texts(SAMPLES, [0, 1, 2], ["word", "phrase", "sentence"], seed=0, epoch=0)
    runs = pairs.by_level()
    assert [len(r) for r in runs] == [3, 3, 3] and sum(runs, []) == pairs.texts
    assert runs[2] == [s.caption for s in SAMPLES]  # the sentence level is the captions themselves
