"""Image loading and batch augmentation with Pillow, numpy and torch only (no torchvision).

The pipeline follows the paper / official IVT code: bicubic resize to (H, W), zero padding of
10 px + random crop back to (H, W), random horizontal flip (p 0.5), normalisation, and random
erasing (p 0.5, timm ``mode='pixel'``: area 2-33 %, aspect 0.3-3.3, per-pixel normal noise).

For CPU speed, decoding and resizing happen once per image (:func:`load_image`, cacheable as
uint8), and the random part runs on whole uint8 batches: per-sample parameters are drawn from
a CPU ``torch.Generator`` for the whole batch at once, then crop + flip and erasing are one
slice copy per sample (much cheaper on CPU than a batched gather or full-size masks). Single
(3, H, W) images are accepted too.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ivt.errors import ImageError
from ivt.model.config import IMAGENET_MEAN, IMAGENET_STD
from ivt.runtime import to_device

ERASE_FILLS = ("pixel", "zero")


def load_image(path: str | os.PathLike[str], size: Sequence[int],
               interpolation: str = "bicubic") -> Tensor:
    """Decode ``path`` as RGB and resize it to ``size`` = (H, W) (``bicubic`` or ``bilinear``).

    Returns a uint8 tensor (3, H, W), compact enough to cache a whole dataset in memory.
    Grey, palette, CMYK and 16-bit files are converted to 8-bit RGB (16-bit by scaling, not by
    clipping). Raises :class:`~ivt.errors.ImageError` naming the file when it is missing, empty,
    truncated, too large to decode safely or not an image.
    """
    try:
        with Image.open(path) as img:
            return pil_to_tensor(img, size, interpolation)
    except FileNotFoundError as exc:
        raise ImageError(f"image file not found: {os.fspath(path)}") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"image path is a directory, not a file: {os.fspath(path)}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image {os.fspath(path)} is too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot decode image {os.fspath(path)}: {exc}") from exc


_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def pil_to_tensor(img: Image.Image, size: Sequence[int], interpolation: str = "bicubic") -> Tensor:
    """A PIL image of any mode -> uint8 (3, H, W) RGB resized to ``size`` = (H, W)."""
    height, width = _size(size)
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {interpolation!r}")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit (or float) grey: scale to 8 bits; convert("RGB") would clip everything above 255.
        array = np.asarray(img, dtype=np.float64)
        top = float(array.max(initial=0.0))
        if img.mode.startswith("I;16") or top > 255:
            peak = 65535.0
        else:
            peak = 1.0 if img.mode == "F" and top <= 1.0 else 255.0
        img = Image.fromarray(np.clip(np.rint(array * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
    img = img.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), _RESAMPLE[interpolation])
    array = np.array(img, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or min(int(s) for s in size) <= 0:
        raise ValueError(f"size must be (height, width) with positive entries, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _as_batch(images: Tensor) -> tuple[Tensor, bool]:
    """(B, 3, H, W) uint8 view of ``images`` and whether the input was a single image."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images (from load_image), got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
        single = True
    elif images.dim() == 4:
        single = False
    else:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W) images, got {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"expected 3 channels, got shape {tuple(images.shape)}")
    return images, single


class _Normalize:
    """uint8 -> float32 ``(x / 255 - mean) / std`` with per-channel constants."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 entries, std positive; got {mean}, {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def normalize(self, images: Tensor) -> Tensor:
        """Float32 copy of uint8 ``images`` (B, 3, H, W), normalised as ``x * a - b``."""
        scale, shift = self._constants(images.device)
        out = images.float()
        return out.mul_(scale).sub_(shift)

    def _constants(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(scale, shift) as (1, 3, 1, 1) tensors on ``device``, made once per device (a fresh
        host-to-GPU copy at every call would stall the GPU queue)."""
        cache = self.__dict__.setdefault("_cache", {})
        if device not in cache:
            scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(1, 3, 1, 1)
            shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)]).view(1, 3, 1, 1)
            cache[device] = (scale.to(device), shift.to(device))
        return cache[device]


class EvalTransform(_Normalize):
    """Deterministic evaluation transform: uint8 (B, 3, H, W) or (3, H, W) -> normalised float32.

    Resizing is done by :func:`load_image`; this only scales to [0, 1] and normalises.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__(mean, std)

    def __call__(self, images: Tensor) -> Tensor:
        batch, single = _as_batch(images)
        out = self.normalize(batch)
        return out[0] if single else out


class TrainAugment(_Normalize):
    """Training augmentation on uint8 batches: pad + random crop, flip, normalise, erase.

    ``padding`` = 0, ``flip_p`` = 0 or ``erase_p`` = 0 switch the corresponding step off. The
    output has the input's (H, W). Erasing follows timm's ``RandomErasing(max_count=1)``: up to
    10 attempts at a rectangle of area ``erase_area`` x H x W and aspect log-uniform in
    ``erase_aspect`` that fits strictly inside the image; ``erase_fill`` "pixel" fills it with
    standard-normal noise (in normalised space), "zero" with zeros.
    """

    def __init__(
        self,
        padding: int = 10,
        flip_p: float = 0.5,
        erase_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        erase_area: tuple[float, float] = (0.02, 1 / 3),
        erase_aspect: tuple[float, float] = (0.3, 1 / 0.3),
        erase_fill: str = "pixel",
        erase_attempts: int = 10,
    ) -> None:
        super().__init__(mean, std)
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        for name, p in (("flip_p", flip_p), ("erase_p", erase_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if erase_fill not in ERASE_FILLS:
            raise ValueError(f"erase_fill must be one of {ERASE_FILLS}, got {erase_fill!r}")
        if not 0 < erase_area[0] <= erase_area[1] or not 0 < erase_aspect[0] <= erase_aspect[1]:
            raise ValueError(f"bad erase ranges: area {erase_area}, aspect {erase_aspect}")
        self.padding = int(padding)
        self.flip_p = float(flip_p)
        self.erase_p = float(erase_p)
        self.erase_area = (float(erase_area[0]), float(erase_area[1]))
        self.erase_aspect = (float(erase_aspect[0]), float(erase_aspect[1]))
        self.erase_fill = erase_fill
        self.erase_attempts = int(erase_attempts)

    def __call__(self, images: Tensor, seeds: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """Augment uint8 ``images``, image ``i`` with random parameters drawn from a CPU generator
        seeded with ``seeds[i]``: an image's augmentation does not depend on which batch or process
        it lands in (exact resume and sharding). ``device`` is where the output goes (the uint8
        crops are moved there before normalising, a quarter of the bytes of floats).
        """
        batch, single = _as_batch(images)
        if len(seeds) != len(batch):
            raise ValueError(f"got {len(seeds)} seeds for {len(batch)} images")
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        cropped = torch.cat([self.crop_and_flip(batch[i:i + 1], g) for i, g in enumerate(gens)])
        patches = []  # (index, box, noise or None) drawn per image, in the generator's order
        if self.erase_p > 0:
            h, w = batch.shape[-2:]
            for i, g in enumerate(gens):
                top, left, eh, ew = self.erase_boxes(1, h, w, g)[0].tolist()
                if eh:
                    noise = (torch.randn((3, eh, ew), generator=g) if self.erase_fill == "pixel" else None)
                    patches.append((i, top, left, eh, ew, noise))
        # Only uint8 pixels and the erase noise cross to the device; normalising happens there.
        out = self.normalize(to_device(cropped, device))
        for i, top, left, eh, ew, noise in patches:
            out[i, :, top:top + eh, left:left + ew] = 0.0 if noise is None else to_device(noise, out.device)
        return out[0] if single else out

    def crop_and_flip(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Zero-pad by ``padding``, crop a random (H, W) window, flip some horizontally (uint8).

        Parameters are drawn for the whole batch at once; the copy is one slice per sample,
        which on CPU is far cheaper than a 4-D gather.
        """
        b, _, h, w = images.shape
        pad = self.padding
        top = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
        left = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
        flip = (torch.rand(b, generator=generator) < self.flip_p).tolist()
        if pad == 0 and not any(flip):
            return images
        out = torch.zeros_like(images) if pad else torch.empty_like(images)
        for i in range(b):
            # The window of the zero-padded image, as a slice of the original: no padded copy.
            dy, dx = top[i] - pad, left[i] - pad
            ys, ye = max(dy, 0), min(dy + h, h)
            xs, xe = max(dx, 0), min(dx + w, w)
            window = images[i, :, ys:ye, xs:xe]
            oy, ox = ys - dy, xs - dx
            if flip[i]:
                ox = w - (ox + (xe - xs))
                window = window.flip(-1)
            out[i, :, oy:oy + (ye - ys), ox:ox + (xe - xs)] = window
        return out

    def erase_boxes(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, 4) int64 boxes (top, left, h, w) to erase; h = w = 0 where nothing is erased."""
        n = self.erase_attempts
        area = height * width
        lo, hi = self.erase_area
        u_area = torch.rand(batch, n, generator=generator, dtype=torch.float64)
        u_aspect = torch.rand(batch, n, generator=generator, dtype=torch.float64)
        target = (lo + (hi - lo) * u_area) * area
        log_lo, log_hi = math.log(self.erase_aspect[0]), math.log(self.erase_aspect[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u_aspect)
        eh = torch.round(torch.sqrt(target * aspect)).long()
        ew = torch.round(torch.sqrt(target / aspect)).long()
        fits = (eh < height) & (ew < width) & (eh > 0) & (ew > 0)
        first = fits.float().argmax(dim=1)
        pick = torch.arange(batch)
        eh, ew = eh[pick, first], ew[pick, first]
        apply = fits.any(dim=1) & (torch.rand(batch, generator=generator) < self.erase_p)
        u_top = torch.rand(batch, generator=generator, dtype=torch.float64)
        u_left = torch.rand(batch, generator=generator, dtype=torch.float64)
        top = torch.floor(u_top * (height - eh + 1)).long().clamp(max=height - 1)
        left = torch.floor(u_left * (width - ew + 1)).long().clamp(max=width - 1)
        zero = torch.zeros_like(eh)
        return torch.stack(
            [top, left, torch.where(apply, eh, zero), torch.where(apply, ew, zero)], dim=1
        )
