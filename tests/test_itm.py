"""Image-text matching with IVT's own encoder: the joint pass over [image tokens; text tokens]."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import ivt
from ivt.errors import CheckpointError, ConfigError
from ivt.evaluate.rerank import WEIGHTS
from ivt.model import EncoderConfig, IVTEncoder
from ivt.model.packing import pack_texts
from ivt.model.transformer import key_padding_to_attn_mask

MICRO = dict(image_size=(32, 16), patch_size=8, patch_stride=8, width=32, depth=3, num_heads=2,
             vocab_size=50, max_text_len=16, drop_path=0.0, itm=True, itm_layers=2)


@pytest.fixture(scope="module")
def model() -> IVTEncoder:
    torch.manual_seed(0)
    return IVTEncoder(EncoderConfig(**MICRO)).eval()


def _inputs(n: int = 3, length: int = 7):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 32, 16, generator=gen)
    ids = torch.randint(5, 50, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, 4:] = 0
    return images, ids * mask, mask


def _reference(model: IVTEncoder, image_states, text_states, text_mask):
    """The joint pass written out token by token: attention over both with padding masked, then
    image tokens through mlp_vis and text tokens through mlp_txt, block after block."""
    x = torch.cat([image_states, text_states], dim=1)
    p = image_states.shape[1]
    keep = torch.cat([torch.ones(x.shape[0], p, dtype=torch.bool), text_mask.bool()], dim=1)
    for block in model.blocks[model.itm_split:]:
        x = x + block.attn(block.norm1(x), key_padding_to_attn_mask(keep))
        h = block.norm2(x)
        ffn = torch.stack([block.mlp_vis(h[:, i]) if i < p else block.mlp_txt(h[:, i]) for i in range(x.shape[1])], 1)
        x = x + ffn
    return model.itm_head(model.norm(x[:, 0]))


def _states(model: IVTEncoder):
    """(image states, text states, text mask) of the default inputs, without gradients."""
    images, ids, mask = _inputs()
    with torch.no_grad():
        _, img = model.encode_image_with_states(images)
        _, txt, txt_mask = model.encode_text_with_states(ids, mask)
    return img, txt, txt_mask


def test_joint_pass_equals_the_written_out_reference(model):
    images, ids, mask = _inputs()
    with torch.no_grad():
        emb_i, img = model.encode_image_with_states(images)
        emb_t, txt, txt_mask = model.encode_text_with_states(ids, mask)
        logits = model.itm_logits(img, txt, txt_mask)
        assert img.shape == (3, 1 + 8, 32) and txt.shape == (3, 7, 32) and logits.shape == (3, 2)
        torch.testing.assert_close(logits, _reference(model, img, txt, txt_mask))
        # the states are those entering block itm_split of the ordinary pass
        torch.testing.assert_close(emb_i, model.encode_image(images))
        torch.testing.assert_close(emb_t, model.encode_text(ids, mask))


def test_swapping_the_feed_forwards_changes_the_score(model):
    swapped = copy.deepcopy(model)
    for block in swapped.blocks[swapped.itm_split:]:
        block.mlp_vis, block.mlp_txt = block.mlp_txt, block.mlp_vis
    img, txt, txt_mask = _states(model)
    with torch.no_grad():
        assert not torch.allclose(model.itm_logits(img, txt, txt_mask),
                                  swapped.itm_logits(img, txt, txt_mask), atol=1e-4)


def test_text_attends_to_the_image_and_padding_is_masked(model):
    img, txt, txt_mask = _states(model)
    with torch.no_grad():
        base = model.itm_logits(img, txt, txt_mask)
        other_image = model.itm_logits(img.roll(1, dims=0), txt, txt_mask)
        assert not torch.allclose(base, other_image, atol=1e-4)   # the fused token sees the image
        garbage = txt.clone()
        garbage[1, 4:] = 100.0                                   # padding slots of text 1
        torch.testing.assert_close(model.itm_logits(img, garbage, txt_mask), base)
        # one image scored against every text equals the pairs spelled out
        row = model.itm_logits(img[:1], txt, txt_mask)
        torch.testing.assert_close(row, model.itm_logits(img[:1].expand(3, -1, -1), txt, txt_mask))


def test_packed_texts_give_the_padded_states(model):
    _, ids, mask = _inputs(4, 9)
    with torch.no_grad():
        emb, states, smask = model.encode_text_with_states(ids, mask)
        pemb, pstates, pmask = model.encode_packed_text_with_states(pack_texts([(ids, mask)], row_len=12))
    assert torch.equal(pmask, smask[:, :pmask.shape[1]]) and int(smask[:, pmask.shape[1]:].sum()) == 0
    torch.testing.assert_close(pemb, emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pstates * pmask[..., None], (states * smask[..., None])[:, :pmask.shape[1]],
                               atol=1e-5, rtol=1e-5)


def test_a_model_without_the_head_cannot_rerank():
    plain = IVTEncoder(EncoderConfig(**{**MICRO, "itm": False})).eval()
    with pytest.raises(ValueError, match="model.itm"):
        plain.itm_logits(*_states(plain))
    assert plain.itm_head is None and "itm_head.weight" not in plain.state_dict()
    with pytest.raises(ValueError, match="itm_layers must be from 1 to depth"):
        EncoderConfig(**{**MICRO, "itm_layers": 4})


# ---------------------------------------------------------------- training
def test_hard_negatives_are_other_identities_and_deterministic():
    from ivt.losses import hard_negatives

    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 16, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    draws = [hard_negatives(emb, emb + 0.1, labels, torch.Generator().manual_seed(s)) for s in range(40)]
    for text_for_image, image_for_text in draws:
        assert (labels[text_for_image] != labels).all() and (labels[image_for_text] != labels).all()
    again = hard_negatives(emb, emb + 0.1, labels, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(again, draws[3]))
    # hard: the most similar other identity is drawn most often
    near = emb.clone()
    near[2] = emb[0] + 0.01                      # identity 1's first image looks like identity 0's
    counts = torch.zeros(12)
    for s in range(200):
        counts[hard_negatives(near, near, labels, torch.Generator().manual_seed(s))[0][0]] += 1
    assert counts.argmax() == 2 and counts[2] > 100
    # a batch of one identity has no negative to give
    alone = hard_negatives(emb[:2], emb[:2], labels[:2], torch.Generator().manual_seed(0))
    assert alone[0].tolist() == [-1, -1] and alone[1].tolist() == [-1, -1]


def test_itm_pairs_scores_the_first_captions_of_the_same_draw(model):
    """``loss.itm_pairs=n``: the joint pass sees exactly the first n captions' positive and negative
    pairs of the full loss (the hard negatives drawn from the whole batch alike), and the loss is
    their cross-entropy."""
    import torch.nn.functional as F

    from ivt.train.distributed import DistInfo
    from ivt.train.pair_encoder import ItmRequest, PairEncoder

    images, ids, mask = _inputs(n=8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    seen = []
    pair = PairEncoder(model)
    joint = model.itm_logits

    def record(img, txt, txt_mask):
        logits = joint(img, txt, txt_mask)
        seen.append((img, txt, logits))
        return logits

    model.itm_logits = record
    try:
        with torch.no_grad():
            losses = {n: pair(images, [(ids, mask)], ItmRequest(0, 8, labels, torch.Generator().manual_seed(5),
                                                                 14.0, DistInfo(), n))[2] for n in (0, 3, 8)}
    finally:
        del model.itm_logits
    (img_all, txt_all, logit_all), (img_3, txt_3, logit_3), (_, _, logit_8) = seen
    assert len(img_all) == 24 and len(img_3) == 9
    pick = [0, 1, 2, 8, 9, 10, 16, 17, 18]         # the first 3 of positives, text negatives, image negatives
    assert torch.equal(img_3, img_all[pick]) and torch.equal(txt_3[:, :txt_all.shape[1]], txt_all[pick])
    target = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert torch.allclose(losses[3], F.cross_entropy(logit_3.float(), target))
    assert torch.allclose(losses[3], F.cross_entropy(logit_all[pick].float(), target), atol=1e-5)
    assert torch.equal(logit_8, logit_all) and torch.equal(losses[8], losses[0])
    assert not torch.allclose(losses[3], losses[0])


def test_itm_training_resumes_exactly_and_packing_changes_nothing(tmp_path):
    from safetensors.torch import load_file

    from helpers import write_toy_pedes
    from ivt.config import load_config
    from ivt.train.trainer import train
    from test_train import FAST

    data = write_toy_pedes(tmp_path / "toy")
    itm = ["model.itm=true", "model.itm_layers=1", "train.epochs=2", "train.eval_every=1",
           "loss.name=infonce", "align.shared_view=true"]

    def cfg(out, *extra):
        return load_config(None, FAST + [f"data.path={data}", f"train.out_dir={tmp_path / out}", *itm, *extra])

    straight = train(cfg("a"))
    log = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    itm_losses = [r["itm_loss"] for r in log if r["kind"] == "train"]
    assert itm_losses and all(0 < v < 5 for v in itm_losses)
    # each validation chooses the head's re-ranking weight; the checkpoints carry the latest
    evals = [r for r in log if r["kind"] == "eval"]
    assert len(evals) == 2 and all(r["rerank_weight"] in WEIGHTS and 0 <= r["rerank_R1"] <= 100 for r in evals)
    for which in ("last", "best"):
        meta = json.loads((straight / f"{which}.json").read_text())
        assert meta["rerank_weight"] == evals[-1]["rerank_weight"]
        assert ivt.load(straight, device="cpu", which=which).rerank_weight == evals[-1]["rerank_weight"]
    tampered = json.loads((straight / "last.json").read_text())
    for bad in ("1", -1, True):
        (straight / "last.json").write_text(json.dumps({**tampered, "rerank_weight": bad}))
        with pytest.raises(CheckpointError, match=r"last\.json: rerank_weight must be a finite number >= 0"):
            ivt.load(straight, device="cpu", which="last")
    (straight / "last.json").write_text(json.dumps(tampered))
    part = train(cfg("b", "train.stop_after_steps=3"))
    resumed = train(load_config(part / "config.yaml", ["train.stop_after_steps=null"]), resume=True)
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(resumed / "last.safetensors"))
    assert "itm_head.weight" in a and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "last.json").read_text())["rerank_weight"] in WEIGHTS
    padded = train(cfg("c", "train.pack_texts=false"))
    c = load_file(str(padded / "last.safetensors"))
    assert all(torch.allclose(a[k], c[k], atol=1e-4) for k in a)


def test_itm_from_trains_the_dual_encoder_alone_first_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from helpers import write_toy_pedes
    from ivt.config import load_config
    from ivt.train.trainer import Trainer, train
    from test_train import FAST

    data = write_toy_pedes(tmp_path / "toy")

    def cfg(out, *extra):
        return load_config(None, FAST + [f"data.path={data}", f"train.out_dir={tmp_path / out}", "model.itm=true",
                                         "train.epochs=2", "train.eval_every=0", "train.log_every=1",
                                         "loss.name=infonce", "align.shared_view=true", *extra])

    late = train(cfg("late", "loss.itm_from=0.5"))
    log = [json.loads(line) for line in (late / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "train"]
    half = len(steps) // 2
    assert len(steps) >= 4 and ["itm_loss" in r for r in steps] == [False] * half + [True] * (len(steps) - half)
    # before the switch the head is left alone (no loss, no weight decay) while the encoder learns
    trainer = Trainer(cfg("early", "loss.itm_from=0.5", f"train.stop_after_steps={half}"))
    head, qkv = trainer.model.itm_head.weight, trainer.model.blocks[0].attn.qkv.weight
    head_before, qkv_before = head.detach().clone(), qkv.detach().clone()
    early = trainer.fit()
    assert torch.equal(head, head_before) and not torch.equal(qkv, qkv_before)
    resumed = train(load_config(early / "config.yaml", ["train.stop_after_steps=null"]), resume=True)
    a, b = load_file(str(late / "last.safetensors")), load_file(str(resumed / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(b["itm_head.weight"], head)
    with pytest.raises(ConfigError, match="loss.itm_from"):
        cfg("bad", "loss.itm_from=1")


# ---------------------------------------------------------------- re-ranking
CAPTIONS = ["a man in a red shirt", "a woman in a blue coat", "a man with a black backpack",
            "a woman in a white dress", "a man in grey trousers"] * 2


@pytest.fixture(scope="module")
def retrieval(model):
    from ivt.inference import RetrievalModel
    from ivt.text.tokenizer import Tokenizer

    return RetrievalModel(model, Tokenizer.train(CAPTIONS, vocab_size=50, max_length=16), {},
                          device=torch.device("cpu"), dtype=None)


def _gallery(n: int = 9) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 16), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)


def _standard(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std(correction=0)


def test_reranking_everything_equals_brute_force_matching(retrieval):
    from ivt.evaluate.rerank import rerank_scores

    images = _gallery()
    emb, states = retrieval.encode_images_with_states(images)
    texts = CAPTIONS[:5]
    sim = retrieval.encode_texts(texts) @ emb.T
    by_itm = rerank_scores(retrieval, sim, texts, states, k=len(images), chunk=2, by="itm")
    fused = rerank_scores(retrieval, sim, texts, states, k=len(images), chunk=2)
    for q, text in enumerate(texts):
        brute = retrieval.rerank(text, images)          # every pair through the joint pass
        assert torch.equal(by_itm[q].argsort(descending=True), brute.argsort(descending=True))
        torch.testing.assert_close(by_itm[q] - by_itm[q].min(), brute - brute.min(), atol=1e-4, rtol=0)
        both = _standard(brute) + _standard(sim[q])     # the fused score, written out
        assert torch.equal(fused[q].argsort(descending=True), both.argsort(descending=True))
        torch.testing.assert_close(fused[q] - fused[q].min(), both - both.min(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="'fused' or 'itm'"):
        rerank_scores(retrieval, sim, texts, states, k=2, by="cosine")


def test_fuse_weighs_both_scores_equally_whatever_their_scales():
    from ivt.evaluate.rerank import fuse

    match = torch.tensor([[4.0, 0.0, 2.0], [40.0, 0.0, 20.0]])     # log-odds; the second row 10x wider
    cosine = torch.tensor([[0.30, 0.32, 0.34], [0.30, 0.32, 0.34]])
    z = 1.5 ** 0.5                                                  # z-scores of (a, b, c) evenly spaced
    torch.testing.assert_close(fuse(match, cosine), torch.tensor([[0.0, -z, z], [0.0, -z, z]]))
    # a score that does not vary adds nothing: equal cosines leave the ITM order, one candidate stays
    torch.testing.assert_close(fuse(match[:1], torch.full((1, 3), 0.3)), torch.tensor([[z, -z, 0.0]]))
    assert fuse(torch.tensor([[7.0]]), torch.tensor([[0.5]])).tolist() == [[0.0]]
    # the weight scales the head's part: 0 leaves the cosine order, 2 doubles the log-odds' say
    torch.testing.assert_close(fuse(match, cosine, 0.0), torch.tensor([[-z, 0.0, z], [-z, 0.0, z]]))
    torch.testing.assert_close(fuse(match, cosine, 2.0), torch.tensor([[z, -2 * z, z], [z, -2 * z, z]]))
    with pytest.raises(ValueError, match="differ in shape"):
        fuse(match, cosine[:, :2])
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite number >= 0"):
            fuse(match, cosine, bad)


def test_choose_weight_picks_what_puts_the_right_image_first():
    from ivt.evaluate.rerank import choose_weight

    gen = torch.Generator().manual_seed(3)
    cosine = torch.sort(torch.rand(200, 8, generator=gen), dim=1, descending=True).values
    truth = torch.randint(0, 8, (200,), generator=gen)
    relevant = torch.nn.functional.one_hot(truth, 8).bool()
    # a head that sees the truth (plus noise) wins at a large weight; the cosine alone gets R1 of chance
    sighted = relevant.float() * 3 + torch.randn(200, 8, generator=gen)
    weight, r1 = choose_weight(sighted, cosine, relevant)
    assert weight == 4.0 and r1[4.0] > 90 and r1[0.0] == 100 * (truth == 0).float().mean().item()
    # a blind head: the cosine order (weight 0) when the cosine is right
    relevant_first = torch.zeros(200, 8, dtype=torch.bool)
    relevant_first[:, 0] = True
    weight, r1 = choose_weight(torch.randn(200, 8, generator=gen), cosine, relevant_first)
    assert weight == 0.0 and r1[0.0] == 100.0 and r1[4.0] < 100.0
    # ties go to the smaller weight
    assert choose_weight(torch.zeros(5, 3), torch.ones(5, 3), torch.ones(5, 3, dtype=torch.bool))[0] == 0.0


def test_the_weight_a_model_carries_orders_its_reranking(retrieval):
    from ivt.evaluate.rerank import rerank_scores

    images = _gallery()
    emb, states = retrieval.encode_images_with_states(images)
    texts = CAPTIONS[:5]
    sim = retrieval.encode_texts(texts) @ emb.T
    before = retrieval.rerank_weight
    try:
        retrieval.rerank_weight = 0.0                    # the head does not count: the cosine order stays
        scores = rerank_scores(retrieval, sim, texts, states, k=6)
        assert torch.equal(scores.argsort(dim=1, descending=True), sim.argsort(dim=1, descending=True))
    finally:
        retrieval.rerank_weight = before
    assert not torch.equal(rerank_scores(retrieval, sim, texts, states, k=6, weight=4.0).argsort(dim=1),
                           sim.argsort(dim=1))


def test_reranking_moves_only_the_top_k(retrieval):
    from ivt.evaluate.rerank import rerank_scores

    images = _gallery()
    emb, states = retrieval.encode_images_with_states(images)
    texts = CAPTIONS[:5]
    sim = retrieval.encode_texts(texts) @ emb.T
    scores = rerank_scores(retrieval, sim, texts, states, k=4)
    for q in range(len(texts)):
        before, after = sim[q].argsort(descending=True), scores[q].argsort(descending=True)
        assert set(after[:4].tolist()) == set(before[:4].tolist())   # the same candidates on top
        assert torch.equal(after[4:], before[4:])                    # the rest in cosine order
    with pytest.raises(ValueError, match="k must be >= 1"):
        rerank_scores(retrieval, sim, texts, states, k=0)


# ---------------------------------------------------------------- every ranking path
def test_every_ranking_path_reranks_and_a_model_without_the_head_says_so(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from helpers import MICRO_MODEL, trained_toy_run
    from ivt.cli import main
    from ivt.serve.app import create_app, load_service

    common = [*MICRO_MODEL, "train.epochs=2", "train.eval_every=0", "train.precision=fp32", "loss.name=infonce",
              "train.batch_size=8", "data.vocab_size=200", "data.max_text_len=24"]
    data, run = trained_toy_run(tmp_path / "itm", [*common, "model.itm=true"])
    _, plain = trained_toy_run(tmp_path / "plain", common)
    capsys.readouterr()
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--which", "last", "--device", "cpu",
                 "--rerank", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rerank"] == 5 and set(result["cosine"]) == {"R1", "R5", "R10", "mAP", "mINP"}
    assert result["rerank_weight"] == 1.0            # trained without validation: no weight chosen
    assert result["R10"] == result["cosine"]["R10"]     # below the top 5 nothing moves: R10 >= 5 unchanged
    assert "(cosine order)" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(plain), "--data", str(data), "--which", "last",
                 "--device", "cpu", "--rerank", "5"]) == 2
    assert "--rerank needs a model trained with an image-text matching head (model.itm=true)" in capsys.readouterr().err

    index = tmp_path / "index"
    assert main(["index", "build", "--checkpoint", str(run), "--which", "last", "--images", str(data),
                 "--split", "test", "--out", str(index), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["search", "a person in a red shirt", "--index", str(index), "--device", "cpu", "--json",
                 "--top-k", "4", "--rerank", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 4 and all("match" in h for h in hits[:3]) and "match" not in hits[3]
    top = torch.tensor([[h["match"], h["score"]] for h in hits[:3]])
    fused = _standard(top[:, 0]) + _standard(top[:, 1])
    assert all(a >= b - 1e-3 for a, b in zip(fused, fused[1:]))   # the top 3 in fused order (rounded inputs)
    service = load_service(index, device="cpu")
    client = TestClient(create_app(service=service))
    body = client.post("/api/search", json={"text": "a person in a red shirt", "k": 4, "rerank": 3}).json()
    assert [h["id"] for h in body["results"]] == [h["id"] for h in hits] and body["rerank"] == 3
    # a candidate image that changed since it was indexed is not re-ranked silently
    service.gallery.item_file(hits[0]["id"]).write_bytes(b"not the indexed image")
    r = client.post("/api/search", json={"text": "a person in a red shirt", "k": 4, "rerank": 3})
    assert r.status_code == 500 and "changed since it was indexed" in r.json()["error"]
