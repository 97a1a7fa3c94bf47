"""A run's configuration -> the encoder it trains: the named size with ``model.*`` overrides, or
the official weights of ``model.init``. The model library (:mod:`ivt.model`) knows nothing of run
configurations; this is where the two meet (as open_clip's factory is kept apart from its trainer).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from ivt.config import ModelConfig, TokenDropConfig
from ivt.errors import CheckpointError, ConfigError
from ivt.model.config import CNN_STEMS, IMAGENET_MEAN, IMAGENET_STD, EncoderConfig, model_config
from ivt.model.factory import Encoder, create_encoder

__all__ = ["encoder_config_for", "build_encoder"]


def encoder_config_for(model_cfg: ModelConfig, vocab_size: int, max_text_len: int,
                       token_drop: TokenDropConfig | None = None) -> EncoderConfig:
    """The EncoderConfig of a run trained from scratch: ``model.size`` with ``model.*`` overrides
    and the run's token dropping (``token_drop.*``; none when not given). A CNN stem brings its
    ImageNet mean/std (unless ``model.image_mean``/``image_std`` are set) and ``model.stem_tune``."""
    overrides: dict[str, Any] = {
        k: v for k, v in (("image_size", model_cfg.image_size), ("patch_size", model_cfg.patch_size),
                          ("patch_stride", model_cfg.patch_stride), ("stem", model_cfg.stem),
                          ("pool", model_cfg.pool),
                          ("drop_path", model_cfg.drop_path), ("dropout", model_cfg.dropout),
                          ("text_dropout", model_cfg.text_dropout),
                          ("image_mean", model_cfg.image_mean), ("image_std", model_cfg.image_std),
                          ("width", model_cfg.width), ("depth", model_cfg.depth), ("num_heads", model_cfg.num_heads))
        if v is not None}
    if token_drop is not None:
        overrides.update(token_drop=token_drop.ratio, token_drop_mode=token_drop.mode)
    if model_cfg.itm:
        overrides.update(itm=True, itm_layers=model_cfg.itm_layers)
    if model_cfg.stem in CNN_STEMS:  # the CNN's ImageNet normalisation is the model's, unless set
        overrides.setdefault("image_mean", IMAGENET_MEAN)
        overrides.setdefault("image_std", IMAGENET_STD)
        overrides["stem_tune"] = model_cfg.stem_tune or "all"
    try:
        config = model_config(model_cfg.size, vocab_size=vocab_size, **overrides)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    if config.max_text_len < max_text_len:
        config = replace(config, max_text_len=max_text_len)
    return config


def _check_init_fits(model_cfg: ModelConfig, config: EncoderConfig, weights: dict[str, Any]) -> None:
    """The one size check of ``model.init``: width, depth, MLP and patch size read from the weights'
    shapes must be the configured ones (a ConfigError naming both values, never a silent override)."""
    found: dict[str, Any] = {}
    if "cls_token" in weights:
        found["width"] = int(weights["cls_token"].shape[-1])
    found["depth"] = len({k.split(".")[1] for k in weights if k.startswith("blocks.")}) or None
    if "blocks.0.mlp_vis.fc1.weight" in weights and "width" in found:
        found["mlp_ratio"] = int(weights["blocks.0.mlp_vis.fc1.weight"].shape[0]) / found["width"]
    if "patch_embed.proj.weight" in weights:
        found["patch_size"] = int(weights["patch_embed.proj.weight"].shape[-1])
    clashes = [f"{name}: model.size={model_cfg.size} has {getattr(config, name)}, the weights have {value}"
               for name, value in found.items() if value is not None and value != getattr(config, name)]
    if clashes:
        raise ConfigError(f"model.init {model_cfg.init} does not fit the configured model size ("
                          + "; ".join(clashes) + "); set model.size to the checkpoint's size (base for the "
                          "official weights)")


def build_encoder(model_cfg: ModelConfig, vocab_size: int, max_text_len: int,
                  token_drop: TokenDropConfig | None = None) -> Encoder:
    """The encoder a training run starts from (training mode): fresh weights, or ``model.init``
    (official IVT weights) checked once against the configured size and the tokenizer's
    vocabulary, then built once."""
    config = encoder_config_for(model_cfg, vocab_size, max_text_len, token_drop=token_drop)
    if not model_cfg.init:
        return create_encoder(config, model_cfg.arch)
    from ivt.model.checkpoint_io import read_state_dict
    from ivt.model.official import adapt_official, infer_official_config, load_official_encoder

    if model_cfg.arch != "ivt":
        raise ConfigError(f"model.init loads IVT weights but model.arch is {model_cfg.arch!r}; "
                          f"set model.arch=ivt (or drop model.init)")
    try:
        weights = adapt_official(read_state_dict(model_cfg.init)).tensors
    except CheckpointError as exc:
        raise CheckpointError(f"model.init: {exc}") from None
    _check_init_fits(model_cfg, config, weights)
    try:
        found = infer_official_config(weights, image_size=config.image_size, patch_size=config.patch_size,
                                      patch_stride=config.patch_stride, num_heads=config.num_heads)
    except CheckpointError as exc:
        raise CheckpointError(f"model.init: {exc}") from None
    if found.max_text_len < max_text_len:
        raise ConfigError(f"data.max_text_len={max_text_len} exceeds the {found.max_text_len} text positions "
                          f"of model.init")
    if found.vocab_size != vocab_size:
        raise ConfigError(f"model.init {model_cfg.init} has a text vocabulary of {found.vocab_size} but the "
                          f"tokenizer has {vocab_size}; set data.tokenizer to the checkpoint's vocab.txt")
    # The weights' architecture and preprocessing (mean = std = 0.5 for the official ones) unless
    # set; the run's own regularisation.
    final = replace(found, dropout=config.dropout, text_dropout=config.text_dropout,
                    attn_dropout=config.attn_dropout, drop_path=config.drop_path,
                    image_mean=config.image_mean if model_cfg.image_mean is not None else found.image_mean,
                    image_std=config.image_std if model_cfg.image_std is not None else found.image_std,
                    token_drop=config.token_drop, token_drop_mode=config.token_drop_mode)
    return load_official_encoder(weights, config=final).train()
