"""Optimisers (AdamW, or the paper's SGD) and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from ivt.config import OPTIMIZERS, OptimConfig
from ivt.errors import ConfigError


def param_groups(modules: dict[str, nn.Module], weight_decay: float) -> list[dict]:
    """Decay matrices; no decay for biases, norms, embeddings-like tokens and the temperature."""
    decay, no_decay = [], []
    for module in modules.values():
        skip = getattr(module, "no_weight_decay", lambda: set())()
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or name in skip or name.endswith(".bias"):
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimConfig, modules: dict[str, nn.Module]) -> torch.optim.Optimizer:
    groups = param_groups(modules, cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=False)
    raise ConfigError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {cfg.name!r}")


class WarmupCosine:
    """Linear warmup then cosine decay to ``min_lr_ratio`` x the base rate.

    Progress is steps / total steps; with a time budget the trainer passes the larger of the step
    and time fractions, so the schedule ends when the budget does.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: float, min_lr_ratio: float) -> None:
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.warmup = max(0.0, min(warmup, 1.0))
        self.min_ratio = min_lr_ratio
        self.set_progress(0.0)

    def factor(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        if self.warmup > 0 and progress < self.warmup:
            return max(progress / self.warmup, 1e-3)
        span = max(1.0 - self.warmup, 1e-12)
        t = (progress - self.warmup) / span
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def set_progress(self, progress: float) -> float:
        f = self.factor(progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f
        return self.optimizer.param_groups[0]["lr"]
