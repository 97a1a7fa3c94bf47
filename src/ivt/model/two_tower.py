"""A two-tower baseline for the ablation: separate image and text transformers, nothing shared.

Each tower is an :class:`IVTEncoder` used for one modality only, with the MLP ratio chosen so the
two towers together have as many parameters in their blocks as one IVT encoder (IVT block: one
attention + two MLPs = 4w^2 + 2 * 2rw^2; two towers: 2 * (4w^2 + 2r'w^2), so r' = r - 1).
The unused half of each tower (text embeddings of the image tower, and so on) never runs.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ivt.model.config import EncoderConfig
from ivt.model.encoder import IVTEncoder
from ivt.model.packing import PackedTexts


class TwoTowerEncoder(nn.Module):
    """Same interface as IVTEncoder for training and evaluation."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        tower = replace(config, mlp_ratio=max(config.mlp_ratio - 1.0, 1.0))
        self.image_tower = IVTEncoder(tower)
        self.text_tower = IVTEncoder(tower)
        # One token-drop layer (and random stream) for both towers, as IVT has one for both modalities.
        self.text_tower.token_drop = self.image_tower.token_drop

    def no_weight_decay(self) -> set[str]:
        return {f"{t}.{n}" for t in ("image_tower", "text_tower") for n in IVTEncoder.no_weight_decay(self.image_tower)}

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tower.encode_image(images)

    def encode_image_subset(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.image_tower.encode_image_subset(images, keep)

    def encode_packed_text(self, packed: PackedTexts) -> torch.Tensor:
        return self.text_tower.encode_packed_text(packed)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_tower.encode_text(input_ids, attention_mask)
