"""Token dropping: the layer behind IVT's bidirectional mask modeling (BMM, in the paper's words).

IVT drops a random number of non-cls tokens of the embedded image or text during training,
which forces the shared encoder to align modalities from partial evidence. The number of
dropped tokens is drawn uniformly from ``[0, int(ratio * L)]`` (``L`` counts the cls token, as
in the official code) and is capped at ``L - 1``. Token 0 (cls) is always kept and the kept
tokens stay in their original order. :class:`TokenDrop` is the layer an encoder owns (as timm's
and open_clip's ``PatchDropout``); :func:`drop_tokens` is its draw.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from ivt.runtime import to_device

__all__ = ["TokenDrop", "TokenDropResult", "drop_tokens", "TOKEN_DROP_MODES"]

TokenDropMode = Literal["batch", "sample"]
#: ``batch``: the same positions for every sample (the official code); ``sample``: per sample.
TOKEN_DROP_MODES: tuple[str, ...] = ("batch", "sample")


class TokenDropResult(NamedTuple):
    """Kept tokens (B, K, C), their key-padding mask (B, K) or None, and kept positions (B, K)."""

    tokens: torch.Tensor
    mask: torch.Tensor | None
    index: torch.Tensor


def check_token_drop(ratio: float, mode: str) -> None:
    """ValueError unless ``ratio`` is in [0, 1) and ``mode`` one of :data:`TOKEN_DROP_MODES`."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"token-drop ratio must be in [0, 1), got {ratio}")
    if mode not in TOKEN_DROP_MODES:
        raise ValueError(f"token-drop mode must be one of {TOKEN_DROP_MODES}, got {mode!r}")


class TokenDrop(nn.Module):
    """Drops up to ``ratio`` of the non-cls tokens in training mode; the identity otherwise.

    Its draws come from ``generator`` when set: the trainer reseeds it at every step from (seed,
    step) (:func:`ivt.train.rng.seed_generators`), so a resumed run drops the same tokens.
    """

    def __init__(self, ratio: float = 0.0, mode: TokenDropMode = "batch") -> None:
        super().__init__()
        check_token_drop(ratio, mode)
        self.ratio, self.mode = float(ratio), mode
        self.generator = torch.Generator()

    @property
    def active(self) -> bool:
        """Whether a forward pass in the current mode drops tokens."""
        return self.training and self.ratio > 0.0

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens, key-padding mask), shortened when active."""
        if not self.active:
            return tokens, mask
        out, out_mask, _ = drop_tokens(tokens, mask, self.ratio, self.mode, self.generator)
        return out, out_mask

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, mode={self.mode!r}"


def drop_tokens(tokens: torch.Tensor, mask: torch.Tensor | None, ratio: float,
                mode: TokenDropMode = "batch",
                generator: torch.Generator | None = None) -> TokenDropResult:
    """Drop a random number of non-cls tokens of ``tokens`` (B, L, C) and ``mask`` (B, L).

    ``mode="batch"`` keeps the same positions for every sample (official behaviour);
    ``mode="sample"`` draws positions per sample (the count is shared so shapes stay
    rectangular). Random draws use ``generator`` (on its device) when given.
    """
    check_token_drop(ratio, mode)
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be (B, L, C), got shape {tuple(tokens.shape)}")
    b, length, c = tokens.shape
    if mask is not None and mask.shape != (b, length):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match tokens {(b, length)}")
    rng_device = generator.device if generator is not None else tokens.device
    max_drop = min(int(ratio * length), length - 1)
    num_drop = int(torch.randint(0, max_drop + 1, (1,), generator=generator,
                                 device=rng_device).item()) if max_drop > 0 else 0
    num_keep = length - 1 - num_drop
    if mode == "batch":
        scores = torch.rand(1, length - 1, generator=generator, device=rng_device).expand(b, -1)
    else:
        scores = torch.rand(b, length - 1, generator=generator, device=rng_device)
    kept = scores.argsort(dim=1)[:, :num_keep].sort(dim=1).values + 1
    index = to_device(torch.cat([kept.new_zeros(b, 1), kept], dim=1), tokens.device)
    out = torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, c))
    out_mask = torch.gather(mask, 1, index) if mask is not None else None
    return TokenDropResult(out, out_mask, index)
