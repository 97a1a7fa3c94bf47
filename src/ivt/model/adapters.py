"""The one shape in which foreign weights enter: a pure state-dict -> state-dict mapping plus one
account of every key (as timm's ``checkpoint_filter_fn``).

An adapter turns a file's tensors into the encoder's names and says, for every key of the file,
what became of it: used (as which encoder key), skipped on purpose (and why), or unknown (mapped
nowhere). It never touches a model. The official IVT import (:mod:`ivt.model.official`), the
paper's ViT/BERT initialisation (:mod:`ivt.model.pretrained`) and the JAX ViT release
(:mod:`ivt.model.jax_vit`) are adapters; loading then checks keys and shapes in one place and
lists every problem before anything is copied.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Adapted", "KeyRule", "adapt", "keep", "listing", "shape_text", "skip"]

MAX_LISTED = 40


@dataclass(frozen=True)
class KeyRule:
    """File keys matching ``pattern`` go to ``target`` (a ``re.sub`` template), or are skipped for ``reason``."""

    pattern: re.Pattern[str]
    target: str | None = None
    reason: str = ""


def keep(pattern: str, target: str) -> KeyRule:
    """A rule mapping the keys that match ``pattern`` (whole key) to ``target``."""
    return KeyRule(re.compile(pattern + r"$"), target)


def skip(pattern: str, reason: str) -> KeyRule:
    """A rule leaving out the keys that match ``pattern`` (whole key), for ``reason``."""
    return KeyRule(re.compile(pattern + r"$"), None, reason)


@dataclass
class Adapted:
    """A foreign state dict in the encoder's names, and the account of every key of the file."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)   # encoder key -> tensor
    used: dict[str, str] = field(default_factory=dict)               # encoder key -> file key(s)
    skipped: dict[str, str] = field(default_factory=dict)            # file key -> why
    unknown: list[str] = field(default_factory=list)                 # file keys that map nowhere
    collisions: list[str] = field(default_factory=list)              # file keys that map to one key


def adapt(state_dict: Mapping[str, torch.Tensor], rules: tuple[KeyRule, ...],
          normalise: Callable[[str], str] = lambda key: key,
          origin: Mapping[str, str] | None = None) -> Adapted:
    """Apply ``rules`` (first match wins) to every key of ``state_dict`` after ``normalise``;
    ``origin`` names the file key(s) a key came from when ``state_dict`` is itself converted."""
    out = Adapted()
    for key, tensor in state_dict.items():
        name, source = normalise(key), (origin or {}).get(key, key)
        rule = next((r for r in rules if r.pattern.match(name)), None)
        if rule is None:
            out.unknown.append(source)
        elif rule.target is None:
            out.skipped[source] = rule.reason
        else:
            target = rule.pattern.sub(rule.target, name)
            if target in out.tensors:
                out.collisions.append(f"{source} and {out.used[target]} both map to {target}")
            out.tensors[target] = tensor
            out.used[target] = source
    return out


def shape_text(shape: Any) -> str:
    """``(768, 3, 16, 16)``: a shape as the error messages print it."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def listing(title: str, items: list[str]) -> str:
    """An indented section of an error message: a title with a count and at most 40 items."""
    shown = items[:MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown) + more
