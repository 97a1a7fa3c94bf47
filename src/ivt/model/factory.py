"""The one model factory: training, checkpoint loading and the official import all build here.

``create_encoder(config, arch)`` turns an :class:`EncoderConfig` into a module;
``encoder_config_for(model_cfg, ...)`` resolves a run's ``model.*`` settings (a named size with
overrides) into that config, refusing contradictory settings instead of silently picking one.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ivt.config import ARCHS
from ivt.errors import CheckpointError, ConfigError
from ivt.model.config import EncoderConfig, model_config
from ivt.model.encoder import IVTEncoder
from ivt.model.two_tower import TwoTowerEncoder

if TYPE_CHECKING:
    from ivt.config import ModelConfig

__all__ = ["ARCHS", "create_encoder", "encoder_config_for", "build_encoder", "arch_of", "Encoder"]

Encoder = IVTEncoder | TwoTowerEncoder


def create_encoder(config: EncoderConfig, arch: str = "ivt", *, device: str | torch.device | None = None) -> Encoder:
    """A freshly initialised encoder of ``arch`` (``device='meta'`` allocates nothing)."""
    if arch not in ARCHS:
        raise ConfigError(f"model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    cls = TwoTowerEncoder if arch == "two-tower" else IVTEncoder
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return cls(config)
    model = cls(config)
    return model.to(device) if device is not None else model


def arch_of(model: nn.Module) -> str:
    """The architecture name stored with a checkpoint."""
    return "two-tower" if isinstance(model, TwoTowerEncoder) else "ivt"


def encoder_config_for(model_cfg: ModelConfig, vocab_size: int, max_text_len: int,
                       init_config: EncoderConfig | None = None) -> EncoderConfig:
    """The EncoderConfig of a run: ``model.size`` with ``model.*`` overrides.

    ``init_config`` is the architecture found in ``model.init`` weights; it must agree with the
    named size (width, depth, heads, MLP) and the architecture must be ``ivt``: a contradiction
    is a :class:`ConfigError` naming both values, never a silent override.
    """
    overrides: dict[str, Any] = {
        k: v for k, v in (("image_size", model_cfg.image_size), ("patch_size", model_cfg.patch_size),
                          ("patch_stride", model_cfg.patch_stride), ("stem", model_cfg.stem),
                          ("pool", model_cfg.pool),
                          ("drop_path", model_cfg.drop_path), ("dropout", model_cfg.dropout),
                          ("text_dropout", model_cfg.text_dropout),
                          ("image_mean", model_cfg.image_mean), ("image_std", model_cfg.image_std),
                          ("width", model_cfg.width), ("depth", model_cfg.depth), ("num_heads", model_cfg.num_heads))
        if v is not None}
    try:
        config = model_config(model_cfg.size, vocab_size=vocab_size, **overrides)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    if config.max_text_len < max_text_len:
        config = replace(config, max_text_len=max_text_len)
    if init_config is None:
        return config
    clashes = [f"{name}: model.size={model_cfg.size} has {getattr(config, name)}, model.init has "
               f"{getattr(init_config, name)}"
               for name in ("width", "depth", "num_heads", "mlp_ratio", "patch_size")
               if getattr(config, name) != getattr(init_config, name)]
    if clashes:
        raise ConfigError("model.init does not fit the configured model size (" + "; ".join(clashes)
                          + "); set model.size to the size of the checkpoint (base for the official weights)")
    if init_config.max_text_len < max_text_len:
        raise ConfigError(f"data.max_text_len={max_text_len} exceeds the {init_config.max_text_len} text positions "
                          f"of model.init")
    # Preprocessing follows the weights (mean = std = 0.5, bilinear for the official ones) unless set.
    mean = config.image_mean if model_cfg.image_mean is not None else init_config.image_mean
    std = config.image_std if model_cfg.image_std is not None else init_config.image_std
    return replace(init_config, dropout=config.dropout, text_dropout=config.text_dropout,
                   attn_dropout=config.attn_dropout, drop_path=config.drop_path, image_mean=mean, image_std=std)


def build_encoder(model_cfg: ModelConfig, vocab_size: int, max_text_len: int) -> Encoder:
    """The encoder a training run starts from: fresh weights, or ``model.init`` (official IVT
    weights) checked against the configured size and the tokenizer's vocabulary."""
    config = encoder_config_for(model_cfg, vocab_size, max_text_len)
    if not model_cfg.init:
        return create_encoder(config, model_cfg.arch)
    from ivt.model.checkpoint_io import read_state_dict
    from ivt.model.official import convert_official_state_dict, load_official_encoder

    if model_cfg.arch != "ivt":
        raise ConfigError(f"model.init loads IVT weights but model.arch is {model_cfg.arch!r}; "
                          f"set model.arch=ivt (or drop model.init)")
    try:
        raw = read_state_dict(model_cfg.init)
    except CheckpointError as exc:
        raise CheckpointError(f"model.init: {exc}") from None
    weights, _ = convert_official_state_dict(raw)
    found = {"width": int(weights["cls_token"].shape[-1]) if "cls_token" in weights else None,
             "depth": len({k.split(".")[1] for k in weights if k.startswith("blocks.")})}
    clashes = [f"{k}: model.size={model_cfg.size} has {getattr(config, k)}, the weights have {v}"
               for k, v in found.items() if v is not None and v != getattr(config, k)]
    if clashes:
        raise ConfigError(f"model.init {model_cfg.init} does not fit the configured model size (" + "; ".join(clashes)
                          + "); set model.size to the checkpoint's size (base for the official weights)")
    loaded = load_official_encoder(weights, image_size=config.image_size, patch_size=config.patch_size,
                                   patch_stride=config.patch_stride, num_heads=config.num_heads)
    final = encoder_config_for(model_cfg, vocab_size, max_text_len, init_config=loaded.config)
    if loaded.config.vocab_size != vocab_size:
        raise ConfigError(f"model.init {model_cfg.init} has a text vocabulary of {loaded.config.vocab_size} but the "
                          f"tokenizer has {vocab_size}; set data.tokenizer to the checkpoint's vocab.txt")
    model = create_encoder(final, "ivt")
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model
