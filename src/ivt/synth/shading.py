"""Shading of the drawn figure so that flat colour fills look more like cloth under daylight:
top-lit vertical falloff, soft cloth folds, fine weave grain and darkening along the silhouette.

The figure is drawn on its own transparent layer and put over the scene (:func:`composite`);
after the image is reduced to its output size, :func:`shade_figure` changes only the pixels
the figure covers (weighted by its coverage). All randomness comes from the caller's numpy
generator, so images stay a pure function of the seed.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def _smooth_noise(shape: tuple[int, int], cell: float, nrng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise in about [-1, 1] that varies over ``cell`` pixels (bicubic upsampling)."""
    h, w = shape
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    coarse = nrng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def composite(scene: Image.Image, layer: Image.Image) -> tuple[Image.Image, Image.Image]:
    """``layer`` (RGBA) over ``scene`` (RGB), in place; returns the scene and the layer's coverage (L)."""
    coverage = layer.getchannel("A")
    scene.paste(layer.convert("RGB"), (0, 0), coverage)
    return scene, coverage


def shade_figure(img: Image.Image, coverage: Image.Image, unit: float, nrng: np.random.Generator) -> Image.Image:
    """Shade the figure's pixels of ``img`` (``coverage``: its alpha, same size; ``unit``: head
    height in pixels)."""
    alpha = np.asarray(coverage, dtype=np.float32) / 255.0
    rows = np.nonzero(alpha.max(axis=1) > 0)[0]
    if len(rows) == 0:
        return img
    h, w = alpha.shape
    top, bottom = rows[0], rows[-1] + 1
    t = np.clip((np.arange(h, dtype=np.float32) - top) / max(bottom - top, 1), 0.0, 1.0)[:, None]
    light = 1.0 + nrng.uniform(0.04, 0.14) * (0.5 - t) * 2.0          # brighter at the shoulders
    folds = 1.0 + nrng.uniform(0.08, 0.2) * _smooth_noise((h, w), max(1.5, nrng.uniform(0.25, 0.5) * unit), nrng)
    grain = 1.0 + nrng.normal(0.0, nrng.uniform(0.01, 0.03), size=(h, w)).astype(np.float32)
    soft = np.asarray(coverage.filter(ImageFilter.GaussianBlur(max(0.7, 0.12 * unit))), dtype=np.float32) / 255.0
    rim = 0.72 + 0.28 * np.clip((soft - 0.5) * 2.0, 0.0, 1.0)        # darker along the outline
    factor = 1.0 + (light * folds * grain * rim - 1.0) * alpha
    out = np.asarray(img, dtype=np.float32) * factor[..., None]
    return Image.fromarray((np.clip(out, 0, 255) + 0.5).astype(np.uint8), "RGB")
