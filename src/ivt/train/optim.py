"""Optimisers (AdamW, or the paper's SGD) and the warmup + cosine learning-rate schedules."""
from __future__ import annotations

import math

import torch
from torch import nn

from ivt.config import OPTIMIZERS, SCHEDULES, OptimConfig
from ivt.errors import ConfigError


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


def param_groups(modules: dict[str, nn.Module], weight_decay: float, *, bias_lr_factor: float = 1.0,
                 decay_all: bool = False, stem_lr_factor: float = 1.0) -> list[dict]:
    """Parameter groups: by default decay on matrices only (not on biases, norms, embedding-like
    tokens or the temperature), every group at the base rate.

    ``decay_all`` decays every parameter and ``bias_lr_factor`` scales the rate of biases (their
    group gets ``lr_scale``), as the official ``make_optimizer`` does (weight decay 1e-4 on all,
    bias rate x2). The parameters of a pretrained CNN stem (a module's ``cnn_stem_parameters()``)
    learn at ``stem_lr_factor`` x their rate; frozen ones are in no group. Empty groups are left out.
    """
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for module in modules.values():
        skip = getattr(module, "no_weight_decay", lambda: set())()
        stem = getattr(module, "cnn_stem_parameters", lambda: set())()
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            decays = decay_all or not (p.ndim < 2 or name in skip or _is_bias(name))
            scale = float(bias_lr_factor) if _is_bias(name) else 1.0
            scale *= float(stem_lr_factor) if name in stem else 1.0
            groups.setdefault((scale, decays), []).append(p)
    out = []
    for (scale, decays), params in groups.items():
        if params:
            group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
            if scale != 1.0:
                group["lr_scale"] = scale
            out.append(group)
    return out


def build_optimizer(cfg: OptimConfig, modules: dict[str, nn.Module]) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, no Nesterov) over :func:`param_groups` of ``modules``."""
    groups = param_groups(modules, cfg.weight_decay, bias_lr_factor=cfg.bias_lr_factor, decay_all=cfg.decay_all,
                          stem_lr_factor=cfg.stem_lr_factor)
    for group in groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=False)
    raise ConfigError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {cfg.name!r}")


class WarmupCosine:
    """Linear warmup over ``warmup_steps`` steps, then cosine decay to ``min_lr_ratio`` x each
    group's base rate.

    The cosine runs on the progress the trainer passes: steps / total steps, or with a time budget
    the larger of the step and time fractions, so the schedule ends when the budget does. The
    warmup always counts steps: ``optim.warmup_epochs`` epochs of steps, whatever the budget (as a
    fraction of a time-budgeted run it would depend on the ``train.epochs`` cap, and a short warmup
    lets contrastive training from scratch collapse to one embedding for every input). The rate is
    the warmup ramp times the cosine factor, which for a step-budgeted run is exactly warmup then
    cosine, and for a budget that ends inside the warmup still decays. The warmup starts from
    ``warmup_start`` x the base rate (None: from 0, floored at 1e-3).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: float, total_steps: int,
                 min_lr_ratio: float, warmup_start: float | None = None) -> None:
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(0.0, min(float(warmup_steps), self.total_steps))
        self.min_ratio = min_lr_ratio
        self.warmup_start = warmup_start
        self.set_progress(0.0, 0)

    def factor(self, progress: float, step: float | None = None) -> float:
        """The rate factor at ``progress`` (0..1) and ``step`` (None: ``progress`` x total steps)."""
        progress = min(max(progress, 0.0), 1.0)
        step = progress * self.total_steps if step is None else step
        ramp = 1.0
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            ramp = max(frac, 1e-3) if self.warmup_start is None else self.warmup_start + (1 - self.warmup_start) * frac
        w = self.warmup_steps / self.total_steps
        t = min(max((progress - w) / max(1.0 - w, 1e-12), 0.0), 1.0)
        return ramp * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def set_progress(self, progress: float, step: float | None = None) -> float:
        f = self.factor(progress, step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f
        return self.optimizer.param_groups[0]["lr"]


class EpochWarmupCosine:
    """The official schedule: timm's ``CosineLRScheduler`` stepped once per epoch.

    Epoch ``t`` (1-based, as the official loop calls ``scheduler.step(epoch)`` before training
    epoch ``t``) runs at ``init + t (base - init) / warmup`` while ``t < warmup``, then at
    ``floor + (base - floor) (1 + cos(pi t / epochs)) / 2``. ``init`` = ``warmup_start`` x lr and
    ``floor`` = ``min_lr_ratio`` x lr are absolute rates shared by every group, while ``base`` is
    the group's own (2 x lr for biases), exactly as timm computes them. The last epoch runs at
    ``floor``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: float, lr: float,
                 min_lr_ratio: float, warmup_start: float | None = None) -> None:
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.epochs, self.warmup = max(int(epochs), 1), float(warmup_epochs)
        self.init, self.floor = (warmup_start or 0.0) * lr, min_lr_ratio * lr
        self.set_progress(0.0)

    def lrs_at(self, t: float) -> list[float]:
        """Every group's rate during (1-based) epoch ``t``; ``t = 0`` is the rate before training."""
        if t < self.warmup:
            return [self.init + t * (base - self.init) / self.warmup for base in self.base_lrs]
        if t >= self.epochs:
            return [self.floor for _ in self.base_lrs]
        cos = 0.5 * (1 + math.cos(math.pi * t / self.epochs))
        return [self.floor + (base - self.floor) * cos for base in self.base_lrs]

    def epoch_of(self, progress: float) -> int:
        """The 1-based epoch that training ``progress`` (0..1) falls in."""
        return min(int(progress * self.epochs + 1e-9), self.epochs - 1) + 1

    def set_progress(self, progress: float, step: float | None = None) -> float:
        """``step`` is not used: this schedule counts epochs of progress."""
        for group, lr in zip(self.optimizer.param_groups, self.lrs_at(self.epoch_of(progress))):
            group["lr"] = lr
        return self.optimizer.param_groups[0]["lr"]


def build_schedule(cfg: OptimConfig, optimizer: torch.optim.Optimizer, epochs: int,
                   steps_per_epoch: int) -> WarmupCosine | EpochWarmupCosine:
    """The schedule ``optim.schedule`` names; both are driven by ``set_progress(fraction done, step)``."""
    if cfg.schedule == "epoch":
        return EpochWarmupCosine(optimizer, epochs, cfg.warmup_epochs, cfg.lr, cfg.min_lr_ratio, cfg.warmup_start)
    if cfg.schedule == "step":
        return WarmupCosine(optimizer, cfg.warmup_epochs * steps_per_epoch, max(epochs, 1) * steps_per_epoch,
                            cfg.min_lr_ratio, cfg.warmup_start)
    raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
