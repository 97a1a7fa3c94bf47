"""The original JAX ViT release (``ViT-B_16.npz``) in timm's key names and tensor layouts.

The conversion is timm's (``vision_transformer._load_weights``): convolution kernels HWIO ->
OIHW, dense kernels transposed, the per-head query/key/value kernels (C, heads, head_dim)
flattened and stacked into one ``qkv`` matrix, the output kernel (heads, head_dim, C) turned
into a (C, C) projection. Every array of the file is either converted or reported back.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from ivt.errors import CheckpointError
from ivt.model.adapters import Adapted

__all__ = ["jax_vit_to_timm", "read_npz"]

_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_PREFIXES = ("opt/target/", "params/")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickled objects)."""
    try:
        with np.load(str(path), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read as a numpy .npz archive ({exc})") from exc


class _Taker:
    """Reads arrays by name, remembering which were used and which were wanted but absent."""

    def __init__(self, arrays: Mapping[str, np.ndarray], prefix: str) -> None:
        self.arrays, self.prefix = arrays, prefix
        self.used: set[str] = set()
        self.absent: list[str] = []

    def has(self, name: str) -> bool:
        return self.prefix + name in self.arrays

    def __call__(self, name: str) -> torch.Tensor | None:
        key = self.prefix + name
        if key not in self.arrays:
            self.absent.append(key)
            return None
        self.used.add(key)
        return torch.from_numpy(np.ascontiguousarray(self.arrays[key]))


def jax_vit_to_timm(arrays: Mapping[str, np.ndarray]) -> Adapted:
    """The file in timm's names: tensors, ``used`` (timm key -> the npz key(s) it came from) and
    ``unknown`` (npz keys not converted), the shape of every adapter (:mod:`ivt.model.adapters`).

    Raises :class:`CheckpointError` listing the arrays a converted layer needs but the file lacks.
    """
    prefix = next((p for p in _PREFIXES if p + "embedding/kernel" in arrays), "")
    take = _Taker(arrays, prefix)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}

    def put(name: str, tensor: torch.Tensor | None, *sources: str) -> None:
        if tensor is not None:
            out[name] = tensor
            origin[name] = " + ".join(prefix + s for s in sources)

    kernel = take("embedding/kernel")
    put("patch_embed.proj.weight", None if kernel is None else kernel.permute(3, 2, 0, 1),
        "embedding/kernel")
    put("patch_embed.proj.bias", take("embedding/bias"), "embedding/bias")
    put("cls_token", take("cls"), "cls")
    put("pos_embed", take("Transformer/posembed_input/pos_embedding"),
        "Transformer/posembed_input/pos_embedding")
    put("norm.weight", take("Transformer/encoder_norm/scale"), "Transformer/encoder_norm/scale")
    put("norm.bias", take("Transformer/encoder_norm/bias"), "Transformer/encoder_norm/bias")
    for head, target in (("head", "head"), ("pre_logits", "pre_logits.fc")):
        if take.has(f"{head}/kernel"):
            put(f"{target}.weight", take(f"{head}/kernel").T, f"{head}/kernel")
        if take.has(f"{head}/bias"):
            put(f"{target}.bias", take(f"{head}/bias"), f"{head}/bias")
    blocks = sorted({int(m.group(1)) for k in arrays if (m := _BLOCK.match(k[len(prefix):]))})
    for i in blocks:
        _convert_block(i, take, put)
    if take.absent:
        raise CheckpointError("the JAX ViT file lacks arrays that the layers it has need:\n    "
                              + "\n    ".join(take.absent))
    return Adapted(out, origin, unknown=sorted(k for k in arrays if k not in take.used))


def _convert_block(i: int, take: _Taker, put: Callable[..., None]) -> None:
    """One encoder block: LayerNorm_0 -> norm1, attention -> qkv/proj, LayerNorm_2, MlpBlock_3."""
    b = f"Transformer/encoderblock_{i}/"
    mha = b + "MultiHeadDotProductAttention_1/"
    t = f"blocks.{i}."
    for jax_norm, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
        put(t + norm + ".weight", take(f"{b}{jax_norm}/scale"), f"{b}{jax_norm}/scale")
        put(t + norm + ".bias", take(f"{b}{jax_norm}/bias"), f"{b}{jax_norm}/bias")
    names = ("query", "key", "value")
    kernels = [take(f"{mha}{n}/kernel") for n in names]
    if all(k is not None for k in kernels):
        put(t + "attn.qkv.weight", torch.cat([k.flatten(1).T for k in kernels]),
            *(f"{mha}{n}/kernel" for n in names))
    biases = [take(f"{mha}{n}/bias") if take.has(f"{mha}{n}/bias") else None for n in names]
    if any(x is not None for x in biases):
        if all(x is not None for x in biases):
            put(t + "attn.qkv.bias", torch.cat([x.reshape(-1) for x in biases]),
                *(f"{mha}{n}/bias" for n in names))
        else:
            take.absent.extend(take.prefix + f"{mha}{n}/bias" for n, x in zip(names, biases) if x is None)
    out_kernel = take(f"{mha}out/kernel")
    put(t + "attn.proj.weight", None if out_kernel is None else out_kernel.permute(2, 0, 1).flatten(1),
        f"{mha}out/kernel")
    put(t + "attn.proj.bias", take(f"{mha}out/bias"), f"{mha}out/bias")
    for r in (0, 1):
        dense = f"{b}MlpBlock_3/Dense_{r}/"
        w = take(dense + "kernel")
        put(f"{t}mlp.fc{r + 1}.weight", None if w is None else w.T, dense + "kernel")
        put(f"{t}mlp.fc{r + 1}.bias", take(dense + "bias"), dense + "bias")
