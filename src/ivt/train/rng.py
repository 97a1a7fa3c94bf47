"""Counter-based randomness for training: every random draw is a pure function of
(seed, epoch or step, sample position, ...), never of a stream consumed so far.

This is what makes training reproducible without saving RNG states: a run resumed at any step,
and a run sharded over any number of processes, draws the same phrase, word subset and
augmentation for the same sample as an uninterrupted single-process run.
"""
from __future__ import annotations

import random

import torch
from torch import nn

from ivt.model.token_drop import TokenDrop

_MASK = (1 << 64) - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 finaliser over each part)."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (int(part) & _MASK)) & _MASK
        x = (x + 0x9E3779B97F4A7C15) & _MASK
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
        x ^= x >> 31
    return x & ((1 << 63) - 1)


def python_rng(*parts: int) -> random.Random:
    """A ``random.Random`` seeded from ``parts``."""
    return random.Random(derive_seed(*parts))


def reseed_token_drop(model: nn.Module, *parts: int) -> None:
    """Seed the generator of every token-drop layer of ``model`` from ``parts`` (e.g. seed, stream,
    step): the tokens a step drops are then a function of the step, as all training randomness."""
    for module in model.modules():
        if isinstance(module, TokenDrop):
            module.generator.manual_seed(derive_seed(*parts))


def torch_generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``parts``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))
