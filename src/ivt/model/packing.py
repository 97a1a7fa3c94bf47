"""Packed text batches: several texts share a row, so no token is padding.

A training batch holds 192 texts padded per MLA level to its longest text; on SynthPedes 37 % of
those tokens are padding, and at the tiny model's width every token costs the same matmuls. Packing
puts whole texts one after another into rows of ``row_len`` slots (first-fit by decreasing length);
each token attends only to the tokens of its own text (a block-diagonal attention mask) and keeps
its position inside that text, so every text's output tokens are those of the padded encoding.
(Stochastic depth, which drops a row's residual branch, then drops it for the texts of a row
together: the same rate for every text, drawn per row.) Nothing in torch or HF tokenizers packs
variable-length sequences for a BERT-style encoder with per-segment pooling, hence this module.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ivt.runtime import to_device

__all__ = ["PackedTexts", "pack_texts", "DEFAULT_ROW_LEN"]

DEFAULT_ROW_LEN = 64  # slots per row; rows grow to the longest text when that is longer


class PackedTexts(NamedTuple):
    """``N`` texts packed into ``R`` rows of ``P`` slots.

    ``input_ids`` (R, P): token ids, 0 in free slots; ``positions`` (R, P): each token's position
    inside its own text; ``segments`` (R, P): the index of the text a slot holds (texts numbered
    in input order), -1 for a free slot; ``lengths`` (N,): the tokens of each text; ``starts`` (N,):
    the flat slot (row * P + column) of each text's first token. A NamedTuple of tensors, so DDP
    moves it to the device like any other input.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    lengths: torch.Tensor
    starts: torch.Tensor

    @property
    def num_texts(self) -> int:
        return int(self.lengths.numel())

    def attn_mask(self) -> torch.Tensor:
        """(R, 1, P, P) boolean SDPA mask: True where query and key hold the same text (free
        slots attend to each other, so no softmax row is empty; no text sees them)."""
        return (self.segments[:, :, None] == self.segments[:, None, :])[:, None]

    def fill(self) -> float:
        """Fraction of the slots that hold a token."""
        return float(self.lengths.sum()) / max(self.input_ids.numel(), 1)

    def unpack(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slot values ``rows`` (R, P, C) back to one right-padded row per text: (N, L, C)
        and its mask (N, L), L the longest text (gradients flow back to ``rows``)."""
        segments, positions = self.segments.flatten(), self.positions.flatten()
        real = segments >= 0
        length = int(self.lengths.max())
        out = rows.new_zeros(self.num_texts, length, rows.shape[-1])
        out[segments[real], positions[real]] = rows.flatten(0, 1)[real]
        mask = torch.zeros(self.num_texts, length, dtype=torch.long, device=rows.device)
        mask[segments[real], positions[real]] = 1
        return out, mask

    def to(self, device: torch.device | str) -> PackedTexts:
        """On ``device``, copied as every training input is (:func:`ivt.runtime.to_device`)."""
        return PackedTexts(*(to_device(t, device) for t in self))


def _check_chunk(ids: torch.Tensor, mask: torch.Tensor) -> None:
    if ids.dim() != 2 or mask.shape != ids.shape:
        raise ValueError(f"each chunk needs input_ids (B, L) and a mask of the same shape, got "
                         f"{tuple(ids.shape)} and {tuple(mask.shape)}")
    m = mask.bool()
    if m.shape[1] > 1 and bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError("attention_mask must mark each text's tokens first and its padding after "
                         "(right padding); got a real token after padding")
    if bool((m.sum(1) == 0).any()):
        raise ValueError("a text has no tokens (attention_mask all 0)")


def _first_fit(lengths: list[int], row_len: int) -> tuple[list[int], list[int], int]:
    """Row and column of each text, first-fit by decreasing length; and the number of rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[int] = []
    rows, cols = [0] * len(lengths), [0] * len(lengths)
    for i in order:
        n = lengths[i]
        row = next((r for r, left in enumerate(free) if left >= n), len(free))
        if row == len(free):
            free.append(row_len)
        rows[i], cols[i] = row, row_len - free[row]
        free[row] -= n
    return rows, cols, len(free)


def pack_texts(chunks: Sequence[tuple[torch.Tensor, torch.Tensor]],
               row_len: int = DEFAULT_ROW_LEN) -> PackedTexts:
    """Pack the texts of ``chunks`` ((input_ids, attention_mask) pairs, right-padded, each to its
    own length) into rows of ``max(row_len, longest text)`` slots; texts are numbered in the
    order of the chunks and of the rows within them."""
    if not chunks:
        raise ValueError("no texts to pack")
    if row_len < 1:
        raise ValueError(f"row_len must be >= 1, got {row_len}")
    for ids, mask in chunks:
        _check_chunk(ids, mask)
    device = chunks[0][0].device
    tokens = torch.cat([ids[mask.bool()] for ids, mask in chunks])
    lengths = torch.cat([mask.bool().sum(1) for _, mask in chunks]).long()
    sizes = lengths.tolist()
    width = max(row_len, max(sizes))
    rows, cols, num_rows = _first_fit(sizes, width)
    starts = torch.tensor(rows, device=device) * width + torch.tensor(cols, device=device)
    text_of_token = torch.repeat_interleave(torch.arange(len(sizes), device=device), lengths)
    first_token = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(tokens.numel(), device=device) - first_token[text_of_token]
    slot = starts[text_of_token] + position
    flat = num_rows * width
    input_ids = tokens.new_zeros(flat).index_put_((slot,), tokens)
    positions = torch.zeros(flat, dtype=torch.long, device=device).index_put_((slot,), position)
    segments = torch.full((flat,), -1, dtype=torch.long, device=device).index_put_((slot,), text_of_token)
    shape = (num_rows, width)
    return PackedTexts(input_ids.view(shape), positions.view(shape), segments.view(shape),
                       lengths, starts)
