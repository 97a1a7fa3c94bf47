"""Run directories and checkpoints: safetensors weights + a small JSON of metadata, written atomically.

A run directory holds ``config.yaml`` (the resolved config), ``tokenizer.json``, ``best`` and ``last``
checkpoints (``NAME.safetensors`` + ``NAME.json``), the resumable training state of ``last``
(``last.state.safetensors`` + ``last.state.json``) and ``metrics.jsonl``. Nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ivt.errors import CheckpointError
from ivt.files import atomic_write_json, file_sha256, fsync_dir, write_synced
from ivt.model import EncoderConfig, load_state_dict_strict
from ivt.model.factory import ARCHS, Encoder, arch_of, create_encoder

FORMAT = "ivt-checkpoint"
FORMAT_VERSION = 1
PREPROCESSING = "preprocessing"  # key of the weights file's header holding the image preprocessing


JOURNAL = "commit.json"
_FAULT_DELAY = "IVT_FAULT_INJECT_DELAY"  # crash tests only: seconds to sleep inside a commit


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes (CPU copies of the tensors)."""
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


def commit_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Replace several files of ``run_dir`` together: after a crash at any point, either all of
    them are the new versions or all are the old ones (once :func:`recover_run_dir` has run).

    A redo journal: every new file is written and fsynced as ``NAME.tmp``; then ``commit.json``
    (naming them) is written atomically — the commit point; then the renames; then the journal
    is removed. Recovery finishes the renames of a committed journal, or drops the ``.tmp``
    files of an uncommitted one.
    """
    delay = float(os.environ.get(_FAULT_DELAY, "0") or 0)
    for name, data in files.items():
        write_synced(run_dir / (name + ".tmp"), data)
        if delay:
            time.sleep(delay)
    atomic_write_json(run_dir / JOURNAL, {"files": list(files)})
    if delay:
        time.sleep(delay)
    _apply_journal(run_dir, list(files))


def _apply_journal(run_dir: Path, names: list[str]) -> None:
    for name in names:
        tmp = run_dir / (name + ".tmp")
        if tmp.exists():
            os.replace(tmp, run_dir / name)
    fsync_dir(run_dir)
    (run_dir / JOURNAL).unlink(missing_ok=True)
    fsync_dir(run_dir)


def recover_run_dir(run_dir: Path) -> list[str]:
    """Bring ``run_dir`` to a consistent state after a crash; returns what was done (for logs)."""
    done: list[str] = []
    journal = run_dir / JOURNAL
    if journal.exists():
        try:
            names = json.loads(journal.read_text())["files"]
        except (json.JSONDecodeError, KeyError, TypeError):
            names = None  # a torn journal cannot exist (it is written atomically); be safe anyway
        if isinstance(names, list):
            _apply_journal(run_dir, [str(n) for n in names])
            done.append(f"completed an interrupted checkpoint write ({', '.join(map(str, names))})")
        else:
            journal.unlink()
    for tmp in sorted(run_dir.glob("*.tmp")):
        tmp.unlink()
        done.append(f"removed the partial file {tmp.name} of an interrupted write")
    return done


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


def checkpoint_files(name: str, model: Encoder, meta: dict[str, Any]) -> dict[str, bytes]:
    """The two files of checkpoint ``name``: ``NAME.safetensors`` (weights) and ``NAME.json``
    (encoder config + ``meta`` + the sha256 of the weights, so a mismatched pair is detectable;
    the image preprocessing is in both files, so an edit of it is detectable too)."""
    # The preprocessing is also written into the weights file, whose sha256 (the model's
    # fingerprint) then covers it: an edit of NAME.json alone is detected at load.
    header = {"format": FORMAT, PREPROCESSING: json.dumps(model.config.preprocessing(), sort_keys=True)}
    weights = tensors_bytes(model.state_dict(), metadata=header)
    info = {"format": FORMAT, "version": FORMAT_VERSION, "arch": arch_of(model), "encoder": model.config.to_dict(),
            "weights_sha256": hashlib.sha256(weights).hexdigest(), **meta}
    return {f"{name}.safetensors": weights, f"{name}.json": (json.dumps(info, indent=2) + "\n").encode()}


def save_checkpoint(run_dir: Path, name: str, model: Encoder, meta: dict[str, Any]) -> Path:
    """Write checkpoint ``name`` of ``run_dir`` (both files together, crash-safe)."""
    commit_files(run_dir, checkpoint_files(name, model, meta))
    return run_dir / f"{name}.safetensors"


def resolve_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path]:
    """(weights, metadata) for a run directory (its ``which`` checkpoint) or a ``.safetensors`` file."""
    p = Path(path)
    if p.is_dir():
        weights = p / f"{which}.safetensors"
        if not weights.exists():
            if which == "best" and (p / "last.safetensors").exists():
                raise CheckpointError(f"{p}: no best checkpoint yet (validation has not run in this run); its latest "
                                      f"weights are the last checkpoint (--which last on the command line, "
                                      f"which='last' in Python)")
            if not (p / "config.yaml").exists() and not (p / "last.safetensors").exists():
                raise CheckpointError(f"{p}: not an ivt run directory (no config.yaml, no checkpoints)")
            raise CheckpointError(f"{p}: no {which}.safetensors in this run directory")
    elif p.suffix == ".safetensors":
        weights = p
    elif p.exists():
        raise CheckpointError(f"{p}: expected a run directory or a .safetensors checkpoint")
    else:
        raise CheckpointError(f"checkpoint not found: {p}")
    return weights, weights.with_suffix(".json")


def load_model(path: str | Path, which: str = "best", device: str | torch.device = "cpu",
               overrides: dict[str, Any] | None = None) -> tuple[Encoder, dict]:
    """An encoder in eval mode from a run directory or checkpoint file, with its metadata;
    ``overrides`` replace fields of its saved EncoderConfig that hold no weights (a resumed run's
    own regularisation, e.g. token dropping, which checkpoints before 0.x did not record)."""
    weights, meta_path = resolve_checkpoint(path, which)
    meta = read_json(meta_path)
    expected = meta.get("weights_sha256")
    if expected is not None and file_sha256(weights) != expected:
        raise CheckpointError(f"{weights}: its content does not match {meta_path.name} (sha256 differs): the file "
                              f"was modified or damaged")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an ivt checkpoint (format {meta.get('format')!r})")
    try:
        config = EncoderConfig.from_dict({**meta["encoder"], **(overrides or {})})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: bad encoder configuration ({exc})") from exc
    check_preprocessing(weights, meta_path, config.preprocessing())
    arch = meta.get("arch", "ivt")
    if arch not in ARCHS:
        raise CheckpointError(f"{meta_path}: unknown architecture {arch!r}")
    model = create_encoder(config, arch)
    load_state_dict_strict(model, read_tensors(weights), str(weights))
    return model.to(device).eval(), meta


def check_preprocessing(weights: Path, meta_path: Path, preprocessing: dict[str, Any]) -> None:
    """CheckpointError when the preprocessing of ``meta_path`` is not the one saved in the weights
    file's header (covered by its sha256): the model would be fed images it was not trained on.
    Checkpoints written before the header held it are accepted as they are."""
    try:
        with safe_open(str(weights), "pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc
    if PREPROCESSING not in header:
        return
    try:
        saved = json.loads(header[PREPROCESSING])
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{weights}: its {PREPROCESSING} header is not a JSON object (damaged file)")
    changed = [f"{key} {preprocessing.get(key)} (saved with the weights: {saved.get(key)})"
               for key in sorted(set(saved) | set(preprocessing)) if saved.get(key) != preprocessing.get(key)]
    if changed:
        raise CheckpointError(f"{meta_path}: image preprocessing differs from the one saved in {weights.name}: "
                              f"{'; '.join(changed)}; the metadata was edited or damaged (restore it: the model "
                              f"was trained with the saved values)")


def load_tokenizer(path: str | Path, meta: dict, which: str = "best"):
    """The tokenizer saved with a run, truncating at the length the model was trained with."""
    from ivt.text.tokenizer import Tokenizer

    weights, _ = resolve_checkpoint(path, which)
    max_length = int(meta.get("text_max_length") or meta["encoder"]["max_text_len"])
    return Tokenizer.from_file(weights.parent, max_length=max_length)
