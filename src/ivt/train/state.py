"""Resumable training state: optimiser, loss parameters and loop position, without pickle.

Tensors go to ``last.state.safetensors``; the structure (param-group hyper-parameters, the loop's TrainState)
to ``last.state.json``, with the sha256 of the tensor file so that a damaged state is refused at
resume instead of silently continuing the run from other numbers (as the weights are verified).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ivt.checkpoint import read_json, read_tensors, tensors_bytes
from ivt.errors import CheckpointError
from ivt.files import file_sha256

STATE_TENSORS = "last.state.safetensors"
STATE_JSON = "last.state.json"


@dataclass
class TrainState:
    """Where a run stands: what the loop advances and a resume restores (in ``last.state.json``)."""

    epoch: int = 0                      # whole epochs done
    batch: int = 0                      # batches done in the current epoch
    step: int = 0                       # optimisation steps done
    train_seconds: float = 0.0          # time in steps, against train.max_minutes
    best_score: list[float] | None = None   # [R1, mAP] of the best checkpoint
    best_epoch: float | None = None
    evaluated_epoch: float | None = None    # the last epoch validated (once per epoch)
    world_size: int = 1
    precision: str = "fp32"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        """The state saved in ``values`` (other entries, such as the optimiser's, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


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


def train_state_files(*, optimizer: torch.optim.Optimizer, extra_modules: dict[str, torch.nn.Module],
                      state: TrainState) -> dict[str, bytes]:
    """The files of the resumable state (``last.state.safetensors`` + ``last.state.json``).

    No RNG state is needed: every random draw of training is derived from (seed, step or epoch,
    position) (see :mod:`ivt.train.rng`).
    """
    tensors, optim_info = optimizer_to_flat(optimizer)
    for prefix, module in extra_modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value
    data = tensors_bytes(tensors)
    info = {"optimizer": optim_info, **dataclasses.asdict(state), "tensors_sha256": hashlib.sha256(data).hexdigest()}
    return {STATE_TENSORS: data, STATE_JSON: (json.dumps(info, indent=2) + "\n").encode()}


def _verified_tensors(run_dir: Path, info: dict) -> dict[str, torch.Tensor]:
    """The state tensors, refused when they are not the ones saved (sha256) or not finite: either
    would resume a different run than the one paused, with no sign of it."""
    path = run_dir / STATE_TENSORS
    expected = info.get("tensors_sha256")   # absent in states saved before it was recorded
    if expected is not None and path.exists() and file_sha256(path) != expected:
        raise CheckpointError(f"{path}: its content does not match {STATE_JSON} (sha256 differs): the file was "
                              f"modified or damaged; it cannot be resumed exactly (restore it, or start a new run)")
    tensors = read_tensors(path)
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values: the run diverged before "
                                  f"this state was saved, or the file is damaged; it cannot be resumed (start a "
                                  f"new run, e.g. with a lower optim.lr)")
    return tensors


def load_train_state(run_dir: Path, *, optimizer: torch.optim.Optimizer,
                     extra_modules: dict[str, torch.nn.Module]) -> TrainState:
    """Restore what :func:`train_state_files` wrote; returns the loop's state."""
    info = read_json(run_dir / STATE_JSON)
    tensors = _verified_tensors(run_dir, info)
    try:
        optimizer_from_flat(optimizer, tensors, info["optimizer"])
        for prefix, module in extra_modules.items():
            sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(sub, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir}: the training state does not fit this run ({exc})") from exc
    return TrainState.from_dict(info)
