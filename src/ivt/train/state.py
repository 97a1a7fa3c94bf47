"""Resumable training state: optimiser, RNG states and loop position, without pickle.

Tensors go to ``last.state.safetensors``; the structure (param-group hyper-parameters, Python
RNG state, counters) to ``last.state.json``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ivt.checkpoint import atomic_save_tensors, atomic_write_json, read_json, read_tensors
from ivt.model import CheckpointError


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_train_state(run_dir: Path, *, optimizer: torch.optim.Optimizer, extra_modules: dict[str, torch.nn.Module],
                     augment_rng: torch.Generator, text_rng: random.Random, counters: dict[str, Any]) -> None:
    tensors, optim_info = optimizer_to_flat(optimizer)
    for prefix, module in extra_modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.augment"] = augment_rng.get_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = text_rng.getstate()
    atomic_save_tensors(run_dir / "last.state.safetensors", tensors)
    atomic_write_json(run_dir / "last.state.json", {
        "optimizer": optim_info, "text_rng": [version, list(internal), gauss], **counters,
    })


def load_train_state(run_dir: Path, *, optimizer: torch.optim.Optimizer, extra_modules: dict[str, torch.nn.Module],
                     augment_rng: torch.Generator, text_rng: random.Random) -> dict[str, Any]:
    """Restore what :func:`save_train_state` wrote; returns the counters."""
    tensors = read_tensors(run_dir / "last.state.safetensors")
    info = read_json(run_dir / "last.state.json")
    try:
        optimizer_from_flat(optimizer, tensors, info["optimizer"])
        for prefix, module in extra_modules.items():
            sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(sub, strict=True)
        torch.set_rng_state(tensors["rng.torch"])
        augment_rng.set_state(tensors["rng.augment"])
        cuda_states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        version, internal, gauss = info["text_rng"]
        text_rng.setstate((version, tuple(internal), gauss))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir}: the training state does not fit this run ({exc})") from exc
    return {k: v for k, v in info.items() if k not in ("optimizer", "text_rng")}
