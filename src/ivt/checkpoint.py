"""Run directories and checkpoints: safetensors weights + a small JSON of metadata, written atomically.

A run directory holds ``config.yaml`` (the resolved config), ``tokenizer.json``, ``best`` and ``last``
checkpoints (``NAME.safetensors`` + ``NAME.json``), the resumable training state of ``last``
(``last.state.safetensors`` + ``last.state.json``) and ``metrics.jsonl``. Nothing is unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ivt.model import CheckpointError, EncoderConfig, IVTEncoder, load_state_dict_strict
from ivt.model.two_tower import TwoTowerEncoder

FORMAT = "ivt-checkpoint"
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file with a clear error when it is missing or damaged."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"checkpoint metadata not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def save_checkpoint(run_dir: Path, name: str, model: IVTEncoder | TwoTowerEncoder, meta: dict[str, Any]) -> Path:
    """Write ``NAME.safetensors`` (weights) then ``NAME.json`` (encoder config + ``meta``)."""
    weights = run_dir / f"{name}.safetensors"
    atomic_save_tensors(weights, model.state_dict(), metadata={"format": FORMAT})
    arch = "two-tower" if isinstance(model, TwoTowerEncoder) else "ivt"
    info = {"format": FORMAT, "version": FORMAT_VERSION, "arch": arch, "encoder": model.config.to_dict(), **meta}
    atomic_write_json(run_dir / f"{name}.json", info)
    return weights


def resolve_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path]:
    """(weights, metadata) for a run directory (its ``which`` checkpoint) or a ``.safetensors`` file."""
    p = Path(path)
    if p.is_dir():
        weights = p / f"{which}.safetensors"
        if not weights.exists() and which == "best" and (p / "last.safetensors").exists():
            weights = p / "last.safetensors"
        if not weights.exists():
            raise CheckpointError(f"{p}: no {which}.safetensors in this run directory")
    elif p.suffix == ".safetensors":
        weights = p
    elif p.exists():
        raise CheckpointError(f"{p}: expected a run directory or a .safetensors checkpoint")
    else:
        raise CheckpointError(f"checkpoint not found: {p}")
    return weights, weights.with_suffix(".json")


def load_model(path: str | Path, which: str = "best", device: str | torch.device = "cpu") -> tuple[IVTEncoder | TwoTowerEncoder, dict]:
    """An encoder in eval mode from a run directory or checkpoint file, with its metadata."""
    weights, meta_path = resolve_checkpoint(path, which)
    meta = read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an ivt checkpoint (format {meta.get('format')!r})")
    try:
        config = EncoderConfig.from_dict(meta["encoder"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: bad encoder configuration ({exc})") from exc
    arch = meta.get("arch", "ivt")
    if arch not in ("ivt", "two-tower"):
        raise CheckpointError(f"{meta_path}: unknown architecture {arch!r}")
    model = TwoTowerEncoder(config) if arch == "two-tower" else IVTEncoder(config)
    load_state_dict_strict(model, read_tensors(weights), str(weights))
    return model.to(device).eval(), meta


def load_tokenizer(path: str | Path, meta: dict, which: str = "best"):
    """The tokenizer saved with a run, truncating at the length the model was trained with."""
    from ivt.text.tokenizer import Tokenizer

    weights, _ = resolve_checkpoint(path, which)
    max_length = int(meta.get("text_max_length") or meta["encoder"]["max_text_len"])
    return Tokenizer.from_file(weights.parent, max_length=max_length)
