"""Image stems for from-scratch training: what turns pixels into patch tokens besides the
paper's single patch convolution.

- ``conv``: two 3x3 stride-2 convolutions (GELU), then the patch convolution at a quarter of the
  resolution (Xiao et al. 2021, "Early convolutions help transformers see better").
- ``hmlp``: the hierarchical MLP stem (Touvron et al. 2022): a linear layer on 4x4 pixel
  patches, then linear layers that merge 2x2 neighbours until the patch size is reached, each
  followed by LayerNorm and GELU. Patches never overlap, so every layer is one matrix product
  over a reshaped tensor: on CPU about 10x cheaper than the convolution stem in bf16 (whose
  convolution backward dominates), with the same token grid.
- ``mobilenetv2``: the hybrid stem (ViT paper): the early stages of an ImageNet MobileNetV2 at
  stride 8 or 16 (:class:`MobileNetV2Stem`), weights from ``model.init_stem``; ``resnet18`` and
  ``resnet50`` the same with an ImageNet ResNet (:class:`ResNetStem`).

Both the paper's patch convolution and the convolution stem's last layer are :class:`PatchConv2d`:
a convolution computed as one matrix product over the patches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivt.model.config import EncoderConfig


class PatchConv2d(nn.Conv2d):
    """A patch convolution (no padding, groups or dilation) computed as one matrix product over the
    unfolded patches: the same numbers as the convolution and the same weights (``weight`` is the
    convolution's (C_out, C_in, kh, kw)), so checkpoints do not change.

    Why by hand: on CPU, bf16 convolution backward took 67 ms of a 440 ms tiny training step, the
    matrix product about 3 ms; and oneDNN's AMX bf16 convolution (torch 2.13 on an Intel Xeon with
    amx_bf16) returns wrong values when the kernel equals the stride at some channel counts (kernel
    4 from 16 or 24 channels, kernel 8 from 8 to 28: relative error 1.1-1.4 against fp32), which
    stopped the convolution stem from learning in bf16 there. Border pixels that do not fill a
    stride are dropped, as the convolution drops them.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int) -> None:
        super().__init__(in_chans, out_chans, kernel_size, stride=stride)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, gh * gw, C_out), patches in row-major order."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        b, c, h, w = images.shape
        if (kh, kw) != (sh, sw):
            patches = F.unfold(images, (kh, kw), stride=(sh, sw)).transpose(1, 2)
            return F.linear(patches, self.weight.flatten(1), self.bias)
        gh, gw = h // kh, w // kw
        # (B, C, gh, kh, gw, kw) -> (B, gh, gw, kh, kw, C): channel-last, so a channels-last input
        # needs no copy before the reshape; the weight is permuted to the same (kh, kw, C) order.
        x = images[:, :, :gh * kh, :gw * kw].permute(0, 2, 3, 1).reshape(b, gh, kh, gw, kw, c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, kh * kw * c)
        return F.linear(x, self.weight.permute(0, 2, 3, 1).flatten(1), self.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, gh, gw), as the convolution (channels-last in memory)."""
        b, _, h, w = images.shape
        gh = (h - self.kernel_size[0]) // self.stride[0] + 1
        gw = (w - self.kernel_size[1]) // self.stride[1] + 1
        return self.tokens(images).view(b, gh, gw, -1).permute(0, 3, 1, 2)


def conv_stem(config: EncoderConfig) -> nn.Sequential:
    """Two 3x3 stride-2 convolutions (width/8, width/4 channels, GELU), then the patch convolution
    at a quarter of the resolution: the token grid of ``patch_size``/``patch_stride``."""
    c1, c2 = max(config.width // 8, 8), max(config.width // 4, 16)
    return nn.Sequential(
        nn.Conv2d(config.in_chans, c1, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.GELU(),
        PatchConv2d(c2, config.width, config.patch_size // 4, stride=config.patch_stride // 4))


def hmlp_stages(patch_size: int) -> int:
    """Number of 2x2 merges after the 4x4 patches (patch_size = 4 * 2**stages), or -1."""
    stages, size = 0, 4
    while size < patch_size:
        size, stages = size * 2, stages + 1
    return stages if size == patch_size else -1


class HMLPStem(nn.Module):
    """Hierarchical MLP stem: (B, C, H, W) -> (B, gh * gw, width), patch = stride = 4 * 2**k."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.grid_size = config.grid_size
        self.patch = config.patch_size
        stages = hmlp_stages(config.patch_size)
        dims = [max(config.width // 2 ** (stages - i), 16) for i in range(stages)] + [config.width]
        self.layers = nn.ModuleList([nn.Linear(config.in_chans * 16, dims[0])])  # 4x4 pixels
        self.layers.extend(nn.Linear(4 * dims[i], dims[i + 1]) for i in range(stages))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims[:stages])
        self.act = nn.GELU()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c = images.shape[:2]
        gh, gw = self.grid_size
        p = self.patch
        kind = images.device.type
        if torch.is_autocast_enabled(kind):  # rearrange pixels in the dtype the first layer uses
            images = images.to(torch.get_autocast_dtype(kind))
        # (B, C, gh, p/4, 4, gw, p/4, 4) ordered so that each 4x4 pixel patch, then each 2x2 group
        # of those, ..., is contiguous: merging a 2x2 group is then a reshape.
        x = images[:, :, :gh * p, :gw * p].reshape(b, c, gh * p // 4, 4, gw * p // 4, 4)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * p // 4, gw * p // 4, c * 16)
        for i, layer in enumerate(self.layers):
            if i > 0:  # merge 2x2 neighbours
                h, w, d = x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
                x = x.reshape(b, h, 2, w, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, 4 * d)
            x = layer(x)
            if i < len(self.norms):
                x = self.act(self.norms[i](x)).to(x.dtype)
        return x.reshape(b, gh * gw, -1)


#: How many standard deviations from 0 a BatchNorm channel's mean may lie before its convolution runs
#: in fp32 under autocast (:meth:`FrozenBatchNorm2d.ill_conditioned`). ImageNet MobileNetV2's
#: ``features.2.conv.1`` has a channel at 1,556 (every other one below 8): in bf16 that block alone
#: moved the stem's features by 5%, and a tiny model's embeddings moved by 6.6% (the patch stem's by
#: 0.7%); with that one convolution in fp32, by 3.0% at stride 16 and 1.7% at stride 8.
CANCELLATION_LIMIT = 32.0


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics: ``running_mean``/``running_var`` are buffers that training
    never updates (batches of a few people would make them noise), the affine ``weight``/``bias``
    are parameters a tuned stem may learn. Same keys as ``nn.BatchNorm2d`` minus the counter."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self._key: tuple[int, ...] = ()
        self._ill = False

    def ill_conditioned(self) -> bool:
        """Whether some channel's mean lies more than :data:`CANCELLATION_LIMIT` standard deviations
        from 0: normalising it subtracts two large, nearly equal numbers, which a bf16 input rounded
        before the subtraction leaves mostly wrong. Computed from the statistics once per change of
        them (they are frozen), so no forward waits on the device."""
        key = (id(self.running_mean), self.running_mean._version, id(self.running_var), self.running_var._version)
        if key != self._key:
            ratio = self.running_mean.abs() / (self.running_var + self.eps).sqrt()
            self._key, self._ill = key, bool(ratio.max() > CANCELLATION_LIMIT)
        return self._ill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype)[:, None, None] + shift.to(x.dtype)[:, None, None]


#: MobileNetV2's inverted-residual stages (expansion t, channels c, blocks n, stride s) up to stride 16.
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))


def _conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), FrozenBatchNorm2d(out)]


def conv_norm(conv: nn.Module, norm: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``, in fp32 under autocast when ``norm`` is ill-conditioned."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind) and norm.ill_conditioned():
        with torch.autocast(kind, enabled=False):
            return norm(conv(x.float()))
    return norm(conv(x))


class ConvBNStack(nn.Sequential):
    """Convolutions, BatchNorms and activations in sequence (torchvision's keys), where a convolution
    whose BatchNorm is ill-conditioned runs with its BatchNorm in fp32 under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        low = torch.is_autocast_enabled(kind)
        layers, i = list(self), 0
        while i < len(layers):
            layer, norm = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if low and isinstance(layer, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
                x, i = conv_norm(layer, norm, x), i + 2
            else:
                x, i = layer(x), i + 1
        return x


class InvertedResidual(nn.Module):
    """MobileNetV2 block in torchvision's flat layout (``conv.0`` .. ``conv.7``): 1x1 expansion
    (left out when t = 1), 3x3 depthwise, 1x1 projection, each with BatchNorm; ReLU6 between."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(inp, hidden, 1, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, out, 1, 1)
        self.conv = ConvBNStack(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Stem(nn.Module):
    """The hybrid stem (ViT paper, section 3.1): the early stages of an ImageNet MobileNetV2
    (``features.0`` .. the last block at ``patch_stride`` 8 or 16), then a linear projection of
    each feature-map position to the transformer width: (B, 3, H, W) -> (B, H/s * W/s, width).

    ``config.stem_tune``: ``frozen`` (no CNN parameter learns), ``last`` (only the last stage:
    features 4-6 at stride 8, 11-13 at 16) or ``all``; BatchNorm statistics are always frozen.
    Forward of 32 images at 256x128 with the tiny size on this project's AMD EPYC (avx512_bf16, one
    thread): patch stem 253 ms fp32 / 97 ms bf16, this stem at stride 16 739 / 478 ms, at stride 8
    1,795 / 1,069 ms (two threads: 113 / 50, 469 / 264, 956 / 521 ms); its depthwise convolutions
    are right in bf16 (relative error 0.002, rounding), and the embeddings stay within 3% of fp32's.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNStack(*_conv_bn(config.in_chans, 32, 3, 2), nn.ReLU6(inplace=True))]
        channels, stride, self.last_stage = 32, 2, []
        for expand, out, blocks, step in MOBILENETV2_STAGES:
            if stride * step > config.patch_stride:
                break
            stride *= step
            self.last_stage = list(range(len(layers), len(layers) + blocks))
            for i in range(blocks):
                layers.append(InvertedResidual(channels, out, step if i == 0 else 1, expand))
                channels = out
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(channels, config.width)
        self.set_tuning(config.stem_tune)

    def set_tuning(self, mode: str) -> None:
        """Which CNN parameters learn: ``frozen`` none, ``last`` the last stage, ``all`` every one."""
        for index, layer in enumerate(self.features):
            tuned = mode == "all" or (mode == "last" and index in self.last_stage)
            layer.requires_grad_(tuned)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images.contiguous(memory_format=torch.channels_last))
        return self.proj(x.permute(0, 2, 3, 1).flatten(1, 2))


class ResNetBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock`` (two 3x3, ``bottleneck=False``) or ``Bottleneck`` (1x1,
    3x3 with the stride, 1x1 to 4x the width), with ``downsample.0/1`` where the shape changes."""

    def __init__(self, inp: int, planes: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        out = planes * 4 if bottleneck else planes
        if bottleneck:
            self.conv1, self.bn1 = nn.Conv2d(inp, planes, 1, bias=False), FrozenBatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), FrozenBatchNorm2d(out)
        else:
            self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
            self.bn1 = FrozenBatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.downsample = (nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), FrozenBatchNorm2d(out))
                           if stride != 1 or inp != out else None)
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(conv_norm(self.conv1, self.bn1, x))
        y = conv_norm(self.conv2, self.bn2, y)
        if hasattr(self, "conv3"):
            y = conv_norm(self.conv3, self.bn3, F.relu(y))
        skip = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        return F.relu(y + skip)


#: Blocks of layer1 .. layer3 and whether they are bottlenecks, by stem name.
RESNETS = {"resnet18": ((2, 2, 2), False), "resnet50": ((3, 4, 6), True)}


class ResNetStem(nn.Module):
    """The hybrid stem of the ViT paper proper: an ImageNet ResNet-18 or -50 (torchvision's
    ``conv1``, ``bn1``, max-pool, ``layer1`` .. ``layer2`` at stride 8, .. ``layer3`` at 16), then a
    linear projection of each position to the width. ``stem_tune`` as :class:`MobileNetV2Stem`
    (``last``: the last ``layer``). Forward of 32 images at 256x128 with the tiny size, stride 16,
    on the same AMD EPYC (one thread, random weights): ResNet-18 775 ms fp32 / 350 ms bf16,
    ResNet-50 2,416 / 1,115 ms, beside the patch stem's 242 / 103 ms; bf16 embeddings within 0.6%."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        blocks, bottleneck = RESNETS[config.stem]
        self.conv1 = nn.Conv2d(config.in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        channels, self.stages = 64, 3 if config.patch_stride == 16 else 2
        for stage in range(self.stages):
            layer = []
            for i in range(blocks[stage]):
                block = ResNetBlock(channels, 64 * 2 ** stage, 2 if i == 0 and stage > 0 else 1, bottleneck)
                layer.append(block)
                channels = block.out_channels
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.proj = nn.Linear(channels, config.width)
        self.set_tuning(config.stem_tune)

    def cnn_modules(self) -> list[nn.Module]:
        """The pretrained modules, in order (the projection is the transformer's own)."""
        return [self.conv1, self.bn1, *(getattr(self, f"layer{i + 1}") for i in range(self.stages))]

    def set_tuning(self, mode: str) -> None:
        """Which CNN parameters learn: ``frozen`` none, ``last`` the last ``layer``, ``all`` every one."""
        modules = self.cnn_modules()
        for index, module in enumerate(modules):
            module.requires_grad_(mode == "all" or (mode == "last" and index == len(modules) - 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(conv_norm(self.conv1, self.bn1, images.contiguous(memory_format=torch.channels_last)))
        x = F.max_pool2d(x, 3, 2, 1)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.proj(x.permute(0, 2, 3, 1).flatten(1, 2))
