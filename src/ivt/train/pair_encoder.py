"""What DDP wraps: one forward from a batch of pairs to their image and text embeddings and, with
an :class:`ItmRequest`, the image-text matching loss of the captions and their hard negatives."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ivt.losses import hard_negatives, itm_loss
from ivt.model.packing import PackedTexts
from ivt.runtime import to_device
from ivt.train.distributed import DistInfo, gather_labels, gather_with_grad, max_over_ranks

__all__ = ["ItmRequest", "PairEncoder"]


@dataclass
class ItmRequest:
    """What the image-text matching loss of one step needs besides the encodings: which texts are
    the captions (MLA level ``level``, ``per_level`` texts each), their identities, the step's
    generator for hard negatives and the scale of the similarities they are drawn from. ``pairs``:
    how many of this rank's captions (the first) the loss scores, each with its image and its two
    hard negatives (0: all); the negatives are still drawn from the whole batch, and the joint
    pass's cost falls with the count."""

    level: int
    per_level: int
    labels: torch.Tensor
    generator: torch.Generator
    scale: float
    dist: DistInfo
    pairs: int = 0


class PairEncoder(nn.Module):
    """Image and text embeddings of a batch of pairs in one forward (what DDP wraps), and, with
    an :class:`ItmRequest`, the image-text matching loss of the captions and their hard negatives."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor, texts: list[tuple[torch.Tensor, torch.Tensor]] | PackedTexts,
                itm: ItmRequest | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``texts``: all texts packed into rows (:mod:`ivt.model.packing`), or chunks of (ids,
        mask), each padded to its own length (one per MLA level: word-level texts are short,
        sentences long), encoded separately and concatenated."""
        if itm is None:
            img = self.encoder.encode_image(images)  # first: the order of dropout's random draws
            txt = (self.encoder.encode_packed_text(texts) if isinstance(texts, PackedTexts) else
                   torch.cat([self.encoder.encode_text(ids, mask) for ids, mask in texts]))
            return img, txt, None
        img, img_states = self.encoder.encode_image_with_states(images)
        rows = slice(itm.level * itm.per_level, (itm.level + 1) * itm.per_level)
        if isinstance(texts, PackedTexts):
            txt, txt_states, txt_mask = self.encoder.encode_packed_text_with_states(texts)
            txt_states, txt_mask = txt_states[rows], txt_mask[rows]
            longest = int(txt_mask.sum(1).max())
            txt_states, txt_mask = txt_states[:, :longest], txt_mask[:, :longest]
        else:
            parts = []
            for level, (ids, mask) in enumerate(texts):
                if level == itm.level:
                    emb, txt_states, txt_mask = self.encoder.encode_text_with_states(ids, mask)
                else:
                    emb = self.encoder.encode_text(ids, mask)
                parts.append(emb)
            txt = torch.cat(parts)
        image_rows = slice(None) if len(img) == itm.per_level else rows  # one shared view, or one per level
        loss = self._itm_loss(img[image_rows], img_states[image_rows], txt[rows], txt_states, txt_mask, itm)
        return img, txt, loss

    def _itm_loss(self, img: torch.Tensor, img_states: torch.Tensor, txt: torch.Tensor, txt_states: torch.Tensor,
                  txt_mask: torch.Tensor, itm: ItmRequest) -> torch.Tensor:
        """Each caption with its image (a match), each image with a hard negative caption and each
        caption with a hard negative image (no match), the negatives drawn from every rank's batch."""
        dist, b = itm.dist, len(img)
        neg_text, neg_image = hard_negatives(gather_with_grad(img, dist), gather_with_grad(txt, dist),
                                             gather_labels(itm.labels, dist), itm.generator, itm.scale)
        mine = slice(dist.rank * b, (dist.rank + 1) * b)
        n = min(itm.pairs, b) if itm.pairs else b
        neg_text, neg_image = neg_text[mine][:n], neg_image[mine][:n]
        length = max_over_ranks(txt_states.shape[1], dist, txt_states.device)
        txt_states = F.pad(txt_states, (0, 0, 0, length - txt_states.shape[1]))
        txt_mask = F.pad(txt_mask, (0, length - txt_mask.shape[1]))
        all_img, all_txt = gather_with_grad(img_states, dist), gather_with_grad(txt_states, dist)
        all_mask = gather_labels(txt_mask, dist)
        img_states, txt_states, txt_mask = img_states[:n], txt_states[:n], txt_mask[:n]
        has_text, has_image = neg_text >= 0, neg_image >= 0
        nt, ni = to_device(neg_text[has_text], txt.device), to_device(neg_image[has_image], img.device)
        ht, hi = to_device(has_text, txt.device), to_device(has_image, img.device)
        logits = self.encoder.itm_logits(
            torch.cat([img_states, img_states[ht], all_img[ni]]),
            torch.cat([txt_states, all_txt[nt], txt_states[hi]]),
            torch.cat([txt_mask, all_mask[nt], txt_mask[hi]]))
        return itm_loss(logits, n)
