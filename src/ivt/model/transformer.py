"""Transformer building blocks: shared attention, modality-specific feed-forward."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Mlp", "DropPath", "Block", "Modality", "MODALITIES"]

Modality = Literal["image", "text"]
MODALITIES: tuple[str, ...] = ("image", "text")


def key_padding_to_attn_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) mask with 1/True = keep -> (B, 1, 1, L) boolean SDPA mask (True = attend)."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise ValueError(f"key-padding mask must be (B, L), got shape {tuple(mask.shape)}")
    return mask.bool()[:, None, None, :]


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                        dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out, softmax in fp32.

    Used for bf16 training on CPU, where SDPA's backward is 2-4x slower than these plain matmuls
    (measured in benchmarks/throughput.py); inference keeps the fused SDPA kernel, which wins there.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    attn = scores.float().softmax(dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv) on top of ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (B, L, C); ``attn_mask``: boolean (B, 1, 1, L) (True = attend) or None."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
            x = _explicit_attention(q, k, v, attn_mask, self.attn_drop if self.training else 0.0)
        else:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask,
                dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample during training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Block(nn.Module):
    """Pre-norm block: shared norms and attention, separate MLPs for images and text."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 eps: float = 1e-6) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                              proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp_vis = Mlp(dim, hidden, drop=drop)
        self.mlp_txt = Mlp(dim, hidden, drop=drop)

    def forward_joint(self, x: torch.Tensor, attn_mask: torch.Tensor | None, split: int) -> torch.Tensor:
        """One pass over an image's tokens (the first ``split``) and a text's (the rest) together:
        attention across both, each token through its own modality's feed-forward."""
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        h = self.norm2(x)
        return x + self.drop_path(torch.cat([self.mlp_vis(h[:, :split]), self.mlp_txt(h[:, split:])], dim=1))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                modality: Modality = "image") -> torch.Tensor:
        """``modality`` picks the feed-forward: ``"image"`` -> mlp_vis, ``"text"`` -> mlp_txt."""
        if modality == "image":
            mlp = self.mlp_vis
        elif modality == "text":
            mlp = self.mlp_txt
        else:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(mlp(self.norm2(x)))
