"""Reading state dicts and loading them strictly, with errors that list every problem."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ivt.errors import CheckpointError
from ivt.model.adapters import listing, shape_text

__all__ = [
    "CheckpointError", "CheckpointNotFoundError", "StateDictSource", "read_state_dict", "unwrap_state_dict",
    "state_dict_problems", "check_state_dict", "load_state_dict_strict",
]

StateDictSource = Union[Mapping[str, torch.Tensor], str, os.PathLike]
_WRAPPER_KEYS = ("state_dict", "model", "module")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A weight file that is missing (or a directory): a user error, still a FileNotFoundError."""


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor dict inside ``{'state_dict': ...}`` / ``{'model': ...}`` wrappers."""
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{source}: no state dict found; top-level keys {sorted(map(str, obj))[:20]} "
                f"(expected tensors or one of {_WRAPPER_KEYS})")
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a mapping of tensors, got {type(obj).__name__}")
    return dict(obj)


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(source: StateDictSource) -> dict[str, torch.Tensor]:
    """A tensor dict from a mapping, a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` file.

    Pickled files are read with ``weights_only=True`` (no arbitrary code execution).
    """
    if isinstance(source, Mapping):
        return unwrap_state_dict(source, "state dict")
    path = Path(source)
    if path.is_dir():
        raise CheckpointNotFoundError(f"{path} is a directory, not a checkpoint file (.pth, .pt, .bin or "
                                      f".safetensors)")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types; re-raised with context
            raise CheckpointError(f"{path}: cannot read as a safetensors file: {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint "
                              f"(weights_only=True): {exc}") from exc
    return unwrap_state_dict(obj, str(path))


def state_dict_problems(expected: Mapping[str, Any], state_dict: Mapping[str, Any],
                        *, allow_unexpected: bool = False) -> list[str]:
    """Human-readable problems between expected shapes (or tensors) and a state dict."""
    exp = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)
           for k, v in expected.items()}
    missing = sorted(k for k in exp if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in exp)
    mismatched = sorted(
        f"{k}: expected {shape_text(exp[k])}, found {shape_text(state_dict[k].shape)}"
        for k in exp if k in state_dict and tuple(state_dict[k].shape) != exp[k])
    sections = []
    if missing:
        sections.append(listing("missing keys", missing))
    if unexpected and not allow_unexpected:
        sections.append(listing("unexpected keys", unexpected))
    if mismatched:
        sections.append(listing("shape mismatches", mismatched))
    return sections


def check_state_dict(expected: Mapping[str, Any], state_dict: Mapping[str, Any],
                     source: str, *, allow_unexpected: bool = False) -> None:
    """Raise :class:`CheckpointError` listing missing/unexpected keys and shape mismatches."""
    problems = state_dict_problems(expected, state_dict, allow_unexpected=allow_unexpected)
    if problems:
        raise CheckpointError(f"{source} does not match the model:\n" + "\n".join(problems))


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           source: str, *, assign: bool = False) -> nn.Module:
    """Check keys and shapes against ``model.state_dict()``, then load (``strict=True``).

    ``assign=True`` adopts the given tensors instead of copying (useful for meta-device models).
    Floating tensors are cast to the dtype of the model's parameters.
    """
    own = model.state_dict()
    check_state_dict(own, state_dict, source)
    fixed = {}
    for key, value in state_dict.items():
        target = own[key]
        if value.is_floating_point() and target.is_floating_point() and value.dtype != target.dtype:
            value = value.to(target.dtype)
        fixed[key] = value
    model.load_state_dict(fixed, strict=True, assign=assign)
    return model
