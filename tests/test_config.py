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
        ("train=3", "train: a section of settings, not a value \\(got 3\\)"),
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


@pytest.mark.parametrize("override, later", [("train=null", "train.epochs=3"), ("model=", "model.size=small"),
                                              ("loss=~", "loss.name=sdm")])
def test_a_section_set_to_null_is_refused_not_reset_to_defaults(override, later):
    section = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{section}: a section of settings, not a value \(got null\)"):
        load_config(None, [override, later])
    with pytest.raises(ConfigError, match=rf"^{section}: a section of settings"):
        load_config(None, [override])


def test_a_section_left_empty_in_a_yaml_file_is_refused_even_with_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\nmodel:\n  width: 32\n")
    for overrides in ([], ["train.epochs=3"]):
        with pytest.raises(ConfigError) as info:
            load_config(f, overrides)
        assert str(info.value).startswith(f"{f}: train: a section of settings, not a value (got null)")


@pytest.mark.parametrize("override, message", [
    ("loss.temperature=.inf", "loss.temperature: inf must be a finite number"),
    ("loss.temperature=.nan", "loss.temperature: nan must be a finite number"),
    ("loss.temperature=-.inf", "loss.temperature: -inf must be a finite number"),
    ("loss.temperature=0", "loss.temperature: 0.0 must be > 0"),
    ("optim.lr=.inf", "optim.lr: inf must be a finite number"),
    ("train.max_minutes=.inf", "train.max_minutes: inf must be a finite number"),
    ("model.image_std=[.nan, 0.5, 0.5]", "model.image_std: [nan, 0.5, 0.5] must be finite numbers"),
    ("model.image_mean=[0.5, .inf, 0.5]", "model.image_mean: [0.5, inf, 0.5] must be finite numbers"),
    ("data.max_text_len=100000000", "data.max_text_len: 100000000 must be from 3 to 512"),
    ("data.max_text_len=513", "data.max_text_len: 513 must be from 3 to 512"),
])
def test_non_finite_and_out_of_range_values_are_one_message_naming_key_and_value(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_k_per_id_zero_with_an_identity_sampler_is_a_message_not_a_division_by_zero():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.sampler=identity", "train.k_per_id=0"])
    assert str(info.value) == "train.k_per_id: 0 must be >= 1"


def test_max_text_len_up_to_the_longest_model_positions_loads():
    assert load_config(None, ["data.max_text_len=512"]).data.max_text_len == 512
