"""Import encoders trained with the official IVT code (TencentYoutuResearch/PersonRetrieval-IVT).

Our parameter names are the official ones, so importing is: unwrap the checkpoint, strip the
``module.`` / ``encoder_vl.`` prefixes, drop training-only entries, infer the architecture from
the shapes, check every key and shape, and load. Nothing is skipped silently.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ivt.model.adapters import Adapted, adapt, keep, skip
from ivt.model.checkpoint_io import (
    CheckpointError,
    StateDictSource,
    check_state_dict,
    load_state_dict_strict,
    read_state_dict,
)
from ivt.model.config import HALF, EncoderConfig
from ivt.model.encoder import IVTEncoder
from ivt.model.factory import create_encoder

__all__ = [
    "load_official_encoder", "adapt_official", "infer_official_config",
    "encoder_state_shapes", "OFFICIAL_PREFIXES", "OFFICIAL_FIXED", "TRAINING_ONLY", "CheckpointError",
]

OFFICIAL_PREFIXES = ("module.", "encoder_vl.")
#: What an official checkpoint is beyond its weights' shapes: the official code has one patch
#: convolution, the cls token as embedding, no matching head, and trains on inputs normalised with
#: mean = std = 0.5, evaluated on bilinear resizes (its test transform).
OFFICIAL_FIXED: dict[str, Any] = {"stem": "patch", "pool": "cls", "itm": False, "image_mean": HALF,
                                  "image_std": HALF, "eval_interpolation": "bilinear"}
#: EncoderConfig fields of training only (regularisation): an official checkpoint does not carry them.
TRAINING_ONLY = ("dropout", "text_dropout", "attn_dropout", "drop_path", "token_drop", "token_drop_mode")
#: Our parameter names are the official ones: everything maps to itself but what only training used.
OFFICIAL_RULES = (
    skip(r"temp", "the loss temperature of official training"),
    skip(r"(classifier|bottleneck)_[^.]*\..*", "an identity classifier / bottleneck of official training"),
    skip(r"embeddings\.position_ids", "a buffer of position indices, not a weight"),
    keep(r"(.+)", r"\1"),
)
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight",
             "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
             "embeddings.token_type_embeddings.weight", "blocks.0.mlp_vis.fc1.weight")


def strip_prefixes(key: str, prefixes: tuple[str, ...] = OFFICIAL_PREFIXES) -> str:
    """Remove any leading combination of ``prefixes`` from ``key``."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def adapt_official(state_dict: Mapping[str, torch.Tensor]) -> Adapted:
    """Official keys -> our keys (prefixes stripped, training-only entries skipped with a reason);
    CheckpointError when two entries map to one key."""
    adapted = adapt(state_dict, OFFICIAL_RULES, strip_prefixes)
    if adapted.collisions:
        raise CheckpointError(f"two checkpoint entries map to one key after stripping the prefixes "
                              f"{OFFICIAL_PREFIXES}: {'; '.join(adapted.collisions)}")
    return adapted


def _grid(size: int, patch: int, stride: int) -> int:
    return (size - patch) // stride + 1


def infer_official_config(state_dict: Mapping[str, torch.Tensor], *,
                          image_size: tuple[int, int] = (384, 128), patch_size: int = 16,
                          patch_stride: int | None = None, num_heads: int = 12,
                          **overrides: Any) -> EncoderConfig:
    """Architecture of a converted official state dict (our key names).

    Width, depth, MLP ratio, qkv bias, vocabulary, text positions and token types come from the
    shapes. ``num_heads`` and ``image_size`` cannot be inferred. ``patch_stride=None`` picks the
    stride whose patch grid matches the length of ``pos_embed`` (when several do, the one that
    tiles the image exactly).
    """
    missing = [k for k in _REQUIRED if k not in state_dict]
    if missing:
        raise CheckpointError(f"not an IVT encoder state dict: missing {missing} "
                              f"(found {len(state_dict)} keys, e.g. {sorted(state_dict)[:8]})")
    width = int(state_dict["cls_token"].shape[-1])
    proj = tuple(state_dict["patch_embed.proj.weight"].shape)
    if len(proj) != 4 or proj[2] != proj[3]:
        raise CheckpointError(f"patch_embed.proj.weight: expected (C, in, p, p), found {proj}")
    if proj[2] != patch_size:
        raise CheckpointError(f"patch_embed.proj.weight has patch size {proj[2]} but "
                              f"patch_size={patch_size} was requested")
    if patch_stride is not None and not 1 <= patch_stride <= patch_size:
        raise CheckpointError(f"patch_stride must be from 1 to the patch size {patch_size}, got {patch_stride}")
    positions = int(state_dict["pos_embed"].shape[1])
    h, w = image_size

    def n_pos(stride: int) -> int:
        return 1 + _grid(h, patch_size, stride) * _grid(w, patch_size, stride)

    fitting = [s for s in range(1, patch_size + 1) if n_pos(s) == positions]
    if patch_stride is None:
        exact = [s for s in fitting if (h - patch_size) % s == 0 and (w - patch_size) % s == 0]
        if len(fitting) > 1 and len(exact) == 1:
            fitting = exact
        if len(fitting) != 1:
            raise CheckpointError(
                f"pos_embed has {positions} positions; cannot infer the patch stride for image "
                f"{h}x{w}, patch {patch_size} (strides that fit: {fitting}); pass patch_stride")
        patch_stride = fitting[0]
    elif n_pos(patch_stride) != positions:
        gh, gw = _grid(h, patch_size, patch_stride), _grid(w, patch_size, patch_stride)
        hint = f"; strides that fit this checkpoint: {fitting}" if fitting else (
            "; no stride fits this image size: check image_size")
        raise CheckpointError(
            f"pos_embed has {positions} positions (cls + {positions - 1} patches) but image "
            f"{h}x{w} with patch {patch_size} and stride {patch_stride} gives a {gh}x{gw} grid "
            f"= {1 + gh * gw} positions{hint}")
    depth = len({int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))})
    hidden = int(state_dict["blocks.0.mlp_vis.fc1.weight"].shape[0])
    params: dict[str, Any] = dict(
        image_size=(h, w), patch_size=patch_size, patch_stride=patch_stride, in_chans=proj[1],
        width=width, depth=depth, num_heads=num_heads, mlp_ratio=hidden / width,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        vocab_size=int(state_dict["embeddings.word_embeddings.weight"].shape[0]),
        max_text_len=int(state_dict["embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state_dict["embeddings.token_type_embeddings.weight"].shape[0]),
        **OFFICIAL_FIXED,
    )
    params.update(overrides)
    try:
        config = EncoderConfig(**params)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint implies an invalid configuration: {exc}") from exc
    if config.mlp_hidden != hidden:
        raise CheckpointError(f"MLP hidden size {hidden} is not width {width} x a ratio")
    return config


def encoder_state_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key and shape of ``IVTEncoder(config)``, without allocating memory."""
    model = create_encoder(config, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_official_encoder(state_dict_or_path: StateDictSource, *,
                          image_size: tuple[int, int] = (384, 128), patch_size: int = 16,
                          patch_stride: int | None = None, num_heads: int = 12,
                          strict: bool = True, config: EncoderConfig | None = None,
                          **config_overrides: Any) -> IVTEncoder:
    """Build an :class:`IVTEncoder` (eval mode, float32) from official IVT weights.

    Accepts a dict of tensors, a ``.safetensors`` file, or a ``.pth``/``.pt`` checkpoint (read
    with ``weights_only=True``; ``{'state_dict': ...}``/``{'model': ...}`` are unwrapped). The
    defaults are the paper's (384x128 images, patch 16, 12 heads); ``patch_stride=None`` infers
    12 or 16 from ``pos_embed``. Keys that are neither encoder weights nor known training-only
    entries raise :class:`CheckpointError` (``strict=False``: warn and ignore them). Missing
    keys and shape mismatches always raise. A dict of meta tensors gives a meta-device encoder
    (cheap key/shape checks). ``config`` loads into that architecture instead of the one inferred
    (a caller that inferred and adjusted it already); every key and shape is still checked.
    """
    source = (str(state_dict_or_path) if not isinstance(state_dict_or_path, Mapping)
              else "official state dict")
    raw = read_state_dict(state_dict_or_path)
    converted = adapt_official(raw).tensors
    if config is None:
        config = infer_official_config(converted, image_size=image_size, patch_size=patch_size,
                                       patch_stride=patch_stride, num_heads=num_heads, **config_overrides)
    expected = encoder_state_shapes(config)
    extra = sorted(k for k in converted if k not in expected)
    if extra and not strict:
        warnings.warn(f"{source}: ignoring {len(extra)} keys that are not encoder weights: "
                      f"{extra[:20]}", stacklevel=2)
        converted = {k: v for k, v in converted.items() if k in expected}
    try:
        check_state_dict(expected, converted, source)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}\n  (keys after stripping {OFFICIAL_PREFIXES} and dropping training-only "
            f"entries; strict=False ignores unexpected keys)") from None
    model = create_encoder(config, device="meta")
    on_meta = any(v.is_meta for v in converted.values())
    converted = {k: (v.float() if v.is_floating_point() else v) for k, v in converted.items()}
    if not on_meta:
        # Own copies: the encoder must not alias tensors the caller still holds.
        copy = isinstance(state_dict_or_path, Mapping)
        converted = {k: (v.to("cpu").clone() if copy else v.to("cpu")).contiguous()
                     for k, v in converted.items()}
    load_state_dict_strict(model, converted, source, assign=True)
    return model.eval()
