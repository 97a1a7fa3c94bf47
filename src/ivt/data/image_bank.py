"""Decoded, resized images of a dataset split as uint8 tensors: decoded once and cached in memory
(compact: a CUHK-PEDES-size split at 384x128 is about 5 GB, SynthPedes a few MB), or on demand.
Decoding runs in a thread pool (Pillow releases the GIL)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch

from ivt.errors import ImageError
from ivt.transforms import load_image


class ImageBank:
    """uint8 (3, H, W) images of a list of files, decoded and resized once when ``cache``."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], *, cache: bool = True,
                 threads: int = 4, interpolation: str = "bicubic", entries: Sequence[str] | None = None) -> None:
        self.paths = list(paths)
        self.entries = list(entries) if entries is not None else None
        self.size = size
        self.interpolation = interpolation
        self.threads = max(1, threads)
        self._cache: torch.Tensor | None = None
        if cache and self.paths:
            self._cache = self._decode(range(len(self.paths)))

    def _decode(self, indices: Sequence[int]) -> torch.Tensor:
        with ThreadPoolExecutor(self.threads) as pool:
            images = list(pool.map(self._load, indices))
        return torch.stack(images) if images else torch.empty(0, 3, *self.size, dtype=torch.uint8)

    def _load(self, index: int) -> torch.Tensor:
        try:
            return load_image(self.paths[index], self.size, self.interpolation)
        except ImageError as exc:
            if self.entries is None:
                raise
            raise ImageError(f"{exc}\n  (annotation entry: {self.entries[index]}; `ivt data check` lists every "
                             f"unreadable image at once)") from None

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """uint8 batch (n, 3, H, W) of the given image indices."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self._cache is not None:
            return self._cache.index_select(0, idx)
        return self._decode(idx.tolist())
