"""The one model factory: training, checkpoint loading and the official import all build here.

``create_encoder(config, arch)`` turns an :class:`EncoderConfig` into a module. Turning a run's
configuration into an EncoderConfig is the training side's job (:mod:`ivt.train.encoder_from_config`).
"""
from __future__ import annotations

import torch
from torch import nn

from ivt.errors import ConfigError
from ivt.model.config import EncoderConfig
from ivt.model.encoder import IVTEncoder
from ivt.model.two_tower import TwoTowerEncoder

__all__ = ["ARCHS", "create_encoder", "arch_of", "Encoder"]

Encoder = IVTEncoder | TwoTowerEncoder
ARCHS = ("ivt", "two-tower")


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
