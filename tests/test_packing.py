"""Packed texts: the layout, and the same embeddings and gradients as padded texts."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import write_toy_pedes
from ivt.config import load_config
from ivt.model import IVTEncoder, model_config
from ivt.model.packing import pack_texts
from ivt.model.two_tower import TwoTowerEncoder
from ivt.train.trainer import train


def _chunk(lengths: list[int], pad_to: int, vocab: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random texts of the given lengths (ids 1..vocab-1, 0 = padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), pad_to), generator=g)
    mask = (torch.arange(pad_to)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def test_layout_first_fit_by_decreasing_length():
    chunks = [_chunk([3, 5], 6, seed=1), _chunk([2, 4, 1], 4, seed=2)]
    p = pack_texts(chunks, row_len=8)
    # Decreasing length: 5 (text 1) opens row 0, 4 (text 3) row 1, 3 (text 0) fits row 0 after the 5,
    # 2 (text 2) fits row 1, 1 (text 4) fits row 1.
    assert p.input_ids.shape == (2, 8)
    assert p.segments.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [3, 3, 3, 3, 2, 2, 4, -1]]
    assert p.positions.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 0, 0]]
    assert p.lengths.tolist() == [3, 5, 2, 4, 1] and p.starts.tolist() == [5, 0, 12, 8, 14]
    ids0, ids1 = chunks[0][0], chunks[1][0]
    assert p.input_ids[0, :5].tolist() == ids0[1, :5].tolist()
    assert p.input_ids[0, 5:].tolist() == ids0[0, :3].tolist()
    assert p.input_ids[1, :4].tolist() == ids1[1].tolist() and p.input_ids[1, 7] == 0
    assert p.fill() == pytest.approx(15 / 16)
    mask = p.attn_mask()
    assert mask.shape == (2, 1, 8, 8)
    assert mask[0, 0, 0].tolist() == [True] * 5 + [False] * 3  # text 1 sees only itself
    assert mask[1, 0, 7].tolist() == [False] * 7 + [True]  # the free slot sees only free slots


def test_row_grows_to_the_longest_text():
    p = pack_texts([_chunk([10, 3], 10)], row_len=4)
    assert p.input_ids.shape == (2, 10) and p.segments[1, :3].tolist() == [1, 1, 1]


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_packed_embeddings_and_gradients_equal_padded(pool):
    torch.manual_seed(0)
    cfg = model_config("tiny", vocab_size=50, max_text_len=32, pool=pool, drop_path=0.0)
    model = IVTEncoder(cfg).train().double()  # float64: no rounding to tell apart from a real difference
    chunks = [_chunk([7, 3, 12, 1], 12, seed=3), _chunk([20, 9, 15], 20, seed=4), _chunk([2, 2], 5, seed=5)]
    padded = torch.cat([model.encode_text(ids, mask) for ids, mask in chunks])
    padded.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    packed = model.encode_packed_text(pack_texts(chunks, row_len=16))
    packed.pow(2).sum().backward()
    assert packed.shape == (9, cfg.width)
    torch.testing.assert_close(packed, padded, rtol=1e-10, atol=1e-10)
    params = dict(model.named_parameters())
    assert set(grads) == {n for n, p in params.items() if p.grad is not None}
    for name, grad in grads.items():
        err = float((params[name].grad - grad).norm() / grad.norm().clamp_min(1e-30))
        assert err < 1e-9, (name, err)


def test_two_tower_packs_its_text_tower():
    torch.manual_seed(0)
    model = TwoTowerEncoder(model_config("tiny", vocab_size=50, max_text_len=32, pool="mean")).eval()
    chunks = [_chunk([5, 9, 2], 9, seed=6)]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_packed_text(pack_texts(chunks)),
                                   torch.cat([model.encode_text(*c) for c in chunks]), rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named():
    ids, mask = _chunk([3, 2], 4)
    with pytest.raises(ValueError, match="right padding"):
        pack_texts([(ids, mask.flip(1))])
    with pytest.raises(ValueError, match="no tokens"):
        pack_texts([(ids, torch.zeros_like(mask))])
    with pytest.raises(ValueError, match="same shape"):
        pack_texts([(ids, mask[:, :2])])
    with pytest.raises(ValueError, match="no texts"):
        pack_texts([])
    model = IVTEncoder(model_config("tiny", vocab_size=50, max_text_len=8, token_drop=0.2)).train()
    with pytest.raises(ValueError, match="BMM"):
        model.encode_packed_text(pack_texts([(ids, mask)]))
    model.eval()  # the token-drop layer is inactive outside training
    with pytest.raises(ValueError, match="max_text_len 8"):
        model.encode_packed_text(pack_texts([_chunk([9], 9)]))


def test_training_packed_follows_padded_training(tmp_path):
    """Same run with and without packing (BMM off): the same losses step by step."""
    data = write_toy_pedes(tmp_path / "toy")
    base = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.precision=fp32",
            "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.log_every=1",
            "train.epochs=2", "train.eval_every=0", "token_drop.ratio=0", "model.drop_path=0",
            f"data.path={data}"]
    losses = {}
    for pack in ("true", "false"):
        run = train(load_config(None, base + [f"train.out_dir={tmp_path / pack}", f"train.pack_texts={pack}"]))
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[pack] = [r["loss"] for r in log if r["kind"] == "train"]
    assert len(losses["true"]) == 8
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-3)
