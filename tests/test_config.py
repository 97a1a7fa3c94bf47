"""Config: YAML + dotted overrides, validation, round trip."""
from __future__ import annotations

import pytest

from ivt.config import ConfigError, load_config, save_config


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 4\n  batch_size: 16\nmodel:\n  size: small\n")
    cfg = load_config(f, ["train.epochs=7", "token_drop.ratio=0", "model.image_size=[96, 32]", "optim.clip_grad=null"])
    assert cfg.train.epochs == 7 and cfg.train.batch_size == 16
    assert cfg.model.size == "small" and cfg.model.image_size == [96, 32]
    assert cfg.token_drop.ratio == 0.0 and isinstance(cfg.token_drop.ratio, float)
    assert cfg.optim.clip_grad is None
    out = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(out) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch'"),
        ("trainer.epochs=3", "unknown config key 'trainer'"),
        ("train.epochs=three", "train.epochs: expected an integer"),
        ("align.word=maybe", "align.word: expected true/false"),
        ("train.epochs", "key=value"),
        ("train=3", "train: expected a mapping"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    f.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'optim.lrr'"):
        load_config(f)


def test_the_old_section_name_mask_still_loads(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("mask:\n  ratio: 0.3\n  mode: sample\n")
    cfg = load_config(old, ["mask.ratio=0.1"])
    assert (cfg.token_drop.ratio, cfg.token_drop.mode) == (0.1, "sample")
    assert load_config(old, ["token_drop.ratio=0.2"]).token_drop.ratio == 0.2  # either name, override wins
    both = tmp_path / "both.yaml"
    both.write_text("mask:\n  ratio: 0.3\ntoken_drop:\n  ratio: 0.1\n")
    with pytest.raises(ConfigError, match="'mask' is the old name of 'token_drop'"):
        load_config(both)
