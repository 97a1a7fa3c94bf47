"""The paper's recipe end to end: the configs hold the official values, the text side alone has
dropout, and a training run from ViT + BERT files starts from exactly the mapped weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import write_toy_pedes
from ivt.config import ModelConfig, load_config
from ivt.model import EncoderConfig, IVTEncoder, model_config
from ivt.train.encoder_from_config import encoder_config_for
from ivt.train.trainer import train
from weight_files import VOCAB, bert_state, expected_pos, vit_state

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name, stride, grid, batch", [("cuhk-pedes", 12, (31, 10), 28),
                                                       ("icfg-pedes", 12, (31, 10), 28),
                                                       ("rstpreid", 16, (24, 8), 48)])
def test_paper_configs_hold_the_official_values(name, stride, grid, batch):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    o, t, m = cfg.optim, cfg.train, cfg.model
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.decay_all, o.bias_lr_factor) == ("sgd", 0.005, 0.9, 1e-4,
                                                                                         True, 2.0)
    assert (o.warmup_epochs, o.warmup_start, o.min_lr_ratio, o.schedule, o.clip_grad) == (5, 0.01, 0.002, "epoch",
                                                                                           None)
    assert (t.epochs, t.batch_size, t.sampler, t.k_per_id) == (120, batch, "identity-all", 4)
    assert (cfg.token_drop.ratio, cfg.token_drop.mode) == (0.2, "batch")
    assert (cfg.loss.name, cfg.data.max_text_len) == ("cmpm", 512)
    assert (cfg.augment.padding, cfg.augment.flip_p, cfg.augment.erase_p) == (10, 0.5, 0.5)
    assert cfg.data.tokenizer == "bert-base-uncased" and m.init_image and m.init_text
    enc = encoder_config_for(m, vocab_size=30522, max_text_len=cfg.data.max_text_len)
    assert (enc.width, enc.depth, enc.num_heads, enc.patch_stride, enc.grid_size) == (768, 12, 12, stride, grid)
    assert (enc.dropout, enc.text_dropout, enc.drop_path) == (0.0, 0.1, 0.1)
    assert enc.image_mean == enc.image_std == (0.5, 0.5, 0.5) and enc.eval_interpolation == "bilinear"
    assert enc.max_text_len == 512


def test_text_dropout_only_after_the_text_embeddings():
    config = encoder_config_for(ModelConfig(size="tiny", dropout=0.0, text_dropout=0.1), 40, 16)
    model = IVTEncoder(config)
    assert model.embeddings.dropout.p == 0.1
    assert model.pos_drop.p == 0.0 and model.blocks[0].mlp_txt.drop1.p == 0.0
    assert model.blocks[0].attn.proj_drop.p == 0.0
    old = model_config("tiny", dropout=0.2).to_dict()
    del old["text_dropout"]  # checkpoints written before the field existed
    assert IVTEncoder(EncoderConfig.from_dict(old)).embeddings.dropout.p == 0.2


def test_training_with_lr0_saves_exactly_the_mapped_weights(tmp_path):
    data = write_toy_pedes(tmp_path / "toy")
    vit = vit_state()
    save_file(vit, str(tmp_path / "vit.safetensors"))
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    bert = bert_state(prefix="bert.", old_names=True, positions=128)
    torch.save(bert, bert_dir / "pytorch_model.bin")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "person", "in", "shirt", "with", "trousers", ","]
    (bert_dir / "vocab.txt").write_text("\n".join(words + [f"w{i}" for i in range(VOCAB - len(words))]) + "\n")
    cfg = load_config(CONFIGS / "cuhk-pedes.yaml", [
        f"data.path={data}", "data.tokenizer=null", "data.max_text_len=24", f"train.out_dir={tmp_path / 'run'}",
        "model.size=tiny", "model.width=32", "model.depth=2", "model.num_heads=2", "model.image_size=[64, 32]",
        f"model.init_image={tmp_path / 'vit.safetensors'}", f"model.init_text={bert_dir}", "optim.lr=0",
        "train.epochs=1", "train.batch_size=8", "train.k_per_id=2", "train.eval_every=0", "train.precision=fp32",
        "train.device=cpu", "train.threads=2", "data.decode_threads=1"])
    run = train(cfg)
    saved = load_file(str(run / "last.safetensors"))
    for key, value in vit.items():
        if key.startswith("head"):
            continue
        ours = key.replace(".mlp.", ".mlp_vis.")
        want = expected_pos(value, (5, 2)) if key == "pos_embed" else value
        torch.testing.assert_close(saved[ours], want, rtol=0, atol=1e-6, msg=key)
    for i in range(2):
        for ours, theirs in (("fc1", "intermediate"), ("fc2", "output")):
            want = bert[f"bert.encoder.layer.{i}.{theirs}.dense.weight"]
            assert torch.equal(saved[f"blocks.{i}.mlp_txt.{ours}.weight"], want)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        assert torch.equal(saved[f"embeddings.{name}.weight"], bert[f"bert.embeddings.{name}.weight"])
    assert torch.equal(saved["embeddings.LayerNorm.weight"], bert["bert.embeddings.LayerNorm.gamma"])
    report = (run / "init_report.txt").read_text()
    assert "image (ViT) weights" in report and "text (BERT) weights" in report
    assert "left at from-scratch initialisation: type_embed" in report
    assert (run / "init_report.json").exists()
    assert (run / "tokenizer.json").exists()
    assert '"vocab"' in (run / "tokenizer.json").read_text() and "trousers" in (run / "tokenizer.json").read_text()
