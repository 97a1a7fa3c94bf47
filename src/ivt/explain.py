"""Where in the image does each part of a description match? Relevance maps over image patches.

For the whole text and for each content phrase of it ("black jacket", "red backpack"), the map
says how much the text-image cosine depends on each image patch. It is measured, not read off
attention weights: the image is encoded many times, each time with a random half of its patch
tokens dropped (the encoder's own token dropping, as in BMM training, so no pixel is invented),
and a patch's relevance is the mean similarity over the encodings that kept it minus the mean
over those that dropped it (RISE-style sampling; each mask is paired with its complement, so
every patch is kept exactly half of the time). Phrases are encoded alone, as IVT's word- and
phrase-level alignment trained them to be, which is the "see finer" alignment made visible.

Faithfulness is checked, not assumed: :func:`faithfulness` drops the patches a map ranks highest
and compares the similarity loss with dropping as many random patches (tests and
``benchmarks/explain.py``).
"""
from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ivt.errors import ConfigError, DataError
from ivt.runtime import autocast

if TYPE_CHECKING:
    from ivt.inference import ImageInput, RetrievalModel

#: Words that carry no visual content of their own; phrases are the runs of the other words.
STOP_WORDS = frozenset("""
a an the this that these those some any each other another
in on at of with without by from to into onto over under near behind beside around across for
and or but as while than then also very quite just
is are was were be been being has have had having does do did can could
he she they it his her their its him them who which whose there here one ones
wear wears wearing wore worn dressed carry carries carrying carried hold holds holding held
walk walks walking stand stands standing look looks looking appears seems seen see
person people pedestrian pair pairs piece kind sort color colour colored coloured
""".split())
MAX_PHRASES = 6
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_CHUNK = 32  # masked encodings per forward pass
MAX_SAMPLES = 4096  # masked encodings of one explanation: beyond, minutes of compute for no visible change


def content_phrases(text: str, max_phrases: int = MAX_PHRASES) -> list[str]:
    """The content words and phrases of ``text``: maximal runs of words that are not
    :data:`STOP_WORDS`, lower-cased, first occurrence order, at most ``max_phrases``.

    "A man in a black jacket with a red backpack" -> ["man", "black jacket", "red backpack"].
    """
    phrases: list[str] = []
    run: list[str] = []
    for word in [*_WORD.findall(text.lower()), ""]:
        if word and word not in STOP_WORDS:
            run.append(word)
            continue
        phrase = " ".join(run)
        run = []
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases[:max_phrases]


@dataclass
class PhraseMap:
    """The relevance of every patch (grid rows x columns) for one text; ``similarity`` is the
    cosine of that text with the whole image."""

    phrase: str
    similarity: float
    relevance: np.ndarray

    def ranking(self) -> np.ndarray:
        """Patch indices (row-major) from most to least relevant."""
        return np.argsort(-self.relevance.ravel(), kind="stable")


@dataclass
class Explanation:
    """Relevance maps of a text and its phrases over one image (at the model's input size)."""

    text: str
    pixels: np.ndarray          # (H, W, 3) uint8, the image as the model sees it
    maps: list[PhraseMap]       # the whole text first, then its phrases
    patch_size: int
    patch_stride: int
    samples: int

    def pixel_map(self, index: int) -> np.ndarray:
        """Map ``index`` spread over the pixels (H, W): each pixel gets the mean relevance of the
        patches covering it (patches overlap when the stride is smaller than the patch)."""
        rel = self.maps[index].relevance
        height, width = self.pixels.shape[:2]
        total = np.zeros((height, width), np.float64)
        count = np.zeros((height, width), np.float64)
        p, s = self.patch_size, self.patch_stride
        for r in range(rel.shape[0]):
            for c in range(rel.shape[1]):
                total[r * s:r * s + p, c * s:c * s + p] += rel[r, c]
                count[r * s:r * s + p, c * s:c * s + p] += 1
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _image_tensor(model: RetrievalModel, image: ImageInput) -> torch.Tensor:
    return model.transform(model.preprocess(image)[None]).to(model.device)


def check_samples(samples: object) -> int:
    """``samples`` if it is a usable number of masked encodings: 0 or fewer would draw a map of
    no measurement at all."""
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise ConfigError(f"samples must be a positive integer from 1 to {MAX_SAMPLES} (masked encodings; "
                          f"64 is the default, more gives smoother maps), got {samples!r}")
    return samples


def _check_model(model: RetrievalModel) -> None:
    if not hasattr(model.encoder, "encode_image_subset"):
        raise DataError(f"{type(model.encoder).__name__} cannot encode patch subsets; explanations need an "
                        f"IVT encoder")


@torch.inference_mode()
def _subset_embeddings(model: RetrievalModel, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings (S, D) with only the patches ``keep`` (S, K) of image ``x``."""
    out = []
    for start in range(0, len(keep), _CHUNK):
        with autocast(model.device, model.dtype):
            tokens = model.encoder.encode_image_subset(x, keep[start:start + _CHUNK].to(model.device))
        out.append(model.encoder.pool(tokens).float())
    return F.normalize(torch.cat(out), dim=-1).cpu()


def _complementary_masks(num_patches: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """(2 * ceil(samples / 2), P) bool: random halves and their complements."""
    pairs = max(1, (samples + 1) // 2)
    order = torch.stack([torch.randperm(num_patches, generator=generator) for _ in range(pairs)])
    first = torch.zeros(pairs, num_patches, dtype=torch.bool)
    first.scatter_(1, order[:, : num_patches // 2], True)
    return torch.cat([first, ~first])


def explain(model: RetrievalModel, image: ImageInput, text: str, *, phrases: Sequence[str] | None = None,
            samples: int = 64, seed: int = 0) -> Explanation:
    """Relevance maps of ``text`` (and of its content phrases, or of ``phrases``) over ``image``.

    Cost: ``samples`` encodings of half an image (batched), whatever the number of phrases.
    """
    _check_model(model)
    check_samples(samples)
    if not text or not text.strip():
        raise DataError("the text to explain is empty")
    model.tokenizer.words_left_out(text)           # refused as search refuses it: no known word
    phrases = content_phrases(text) if phrases is None else [p.strip() for p in phrases if p.strip()]
    texts = [text.strip()] + [p for p in phrases if p != text.strip().lower()]
    text_emb = model.encode_texts(texts)                                   # (T, D)
    x = _image_tensor(model, image)
    num_patches = model.config.num_patches
    with torch.inference_mode(), autocast(model.device, model.dtype):
        full = F.normalize(model.encoder.encode_image(x).float(), dim=-1).cpu()
    masks = _complementary_masks(num_patches, samples, torch.Generator().manual_seed(seed))
    half = len(masks) // 2
    sims = []
    for group in (masks[:half], masks[half:]):                            # equal sizes per group
        keep = torch.stack([torch.nonzero(m).squeeze(1) for m in group])
        sims.append(_subset_embeddings(model, x, keep) @ text_emb.T)
    sim = torch.cat(sims).double()                                          # (S, T)
    kept = masks.double()
    relevance = (kept.T @ sim) / kept.sum(0)[:, None] - ((1 - kept).T @ sim) / (1 - kept).sum(0)[:, None]
    grid = tuple(model.config.grid_size)
    maps = [PhraseMap(t, float(full[0] @ text_emb[i]), relevance[:, i].reshape(grid).numpy())
            for i, t in enumerate(texts)]
    pixels = model.preprocess(image).permute(1, 2, 0).numpy()
    return Explanation(text.strip(), pixels, maps, int(model.config.patch_size), int(model.config.patch_stride),
                       len(masks))


@torch.inference_mode()
def similarity_without(model: RetrievalModel, image: ImageInput, texts: Sequence[str],
                       drop: Sequence[Sequence[int]]) -> torch.Tensor:
    """Cosines (R, T) of ``texts`` with the image encoded without the patches of each row of
    ``drop`` (R lists of patch indices, all of the same length)."""
    _check_model(model)
    if isinstance(texts, str):
        raise DataError(f"texts must be a list of strings, got a single str: pass [{texts[:40]!r}] for one")
    num_patches = model.config.num_patches
    keep = []
    for row in drop:
        mask = torch.ones(num_patches, dtype=torch.bool)
        mask[torch.as_tensor(list(row), dtype=torch.long)] = False
        keep.append(torch.nonzero(mask).squeeze(1))
    return _subset_embeddings(model, _image_tensor(model, image), torch.stack(keep)) @ model.encode_texts(list(texts)).T


@dataclass
class Faithfulness:
    """Similarity of one text and image: intact, without the top-ranked patches, and without as
    many random patches (mean over draws)."""

    phrase: str
    full: float
    without_top: float
    without_random: float

    @property
    def gap(self) -> float:
        """How much more the top patches matter than random ones (> 0 means faithful)."""
        return self.without_random - self.without_top


def faithfulness(model: RetrievalModel, image: ImageInput, explanation: Explanation, fraction: float = 0.25,
                 draws: int = 16, seed: int = 0) -> list[Faithfulness]:
    """For every map of ``explanation``: drop its top ``fraction`` of patches vs random ones."""
    num_patches = model.config.num_patches
    count = max(1, round(fraction * num_patches))
    generator = torch.Generator().manual_seed(seed)
    random_rows = [torch.randperm(num_patches, generator=generator)[:count].tolist() for _ in range(draws)]
    texts = [m.phrase for m in explanation.maps]
    rand = similarity_without(model, image, texts, random_rows).mean(0)          # (T,)
    out = []
    for i, m in enumerate(explanation.maps):
        top = similarity_without(model, image, [m.phrase], [m.ranking()[:count].tolist()])[0, 0]
        out.append(Faithfulness(m.phrase, m.similarity, float(top), float(rand[i])))
    return out


# ---------------------------------------------------------------------------------------------
# Drawing

_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """An inferno-like colour (..., 3) uint8 for values in [0, 1]."""
    v = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * _ANCHORS[lo] + t * _ANCHORS[lo + 1]).round().astype(np.uint8)


def overlay(pixels: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``pixels`` (H, W, 3) with the positive part of ``heat`` (H, W) drawn over it."""
    top = float(heat.max())
    norm = np.clip(heat / top, 0.0, 1.0) if top > 0 else np.zeros_like(heat)
    alpha = (0.25 + 0.6 * norm)[..., None]
    return (pixels * (1 - alpha) + colormap(norm) * alpha).round().astype(np.uint8)


def render(explanation: Explanation, height: int = 256, label_chars: int = 18) -> Image.Image:
    """One PNG-ready picture: the image, then one heatmap panel per text, labelled with the text
    and its cosine with the whole image."""
    h0, w0 = explanation.pixels.shape[:2]
    width = max(1, round(w0 * height / h0))
    gap, label_h, title_h = 8, 44, 30
    font = ImageFont.load_default()
    panels = [Image.fromarray(explanation.pixels).resize((width, height), Image.BICUBIC)]
    labels = ["image"]
    for i, m in enumerate(explanation.maps):
        heat = overlay(explanation.pixels, explanation.pixel_map(i))
        panels.append(Image.fromarray(heat).resize((width, height), Image.BICUBIC))
        name = "whole text" if i == 0 else m.phrase
        labels.append("\n".join(textwrap.wrap(name, label_chars)[:2]) + f"\ncos {m.similarity:.3f}")
    canvas = Image.new("RGB", (gap + len(panels) * (width + gap), title_h + height + label_h + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 8), textwrap.shorten(explanation.text, 20 + len(panels) * width // 7), fill="black", font=font)
    for k, (panel, label) in enumerate(zip(panels, labels)):
        x = gap + k * (width + gap)
        canvas.paste(panel, (x, title_h))
        draw.multiline_text((x, title_h + height + 4), label, fill="black", font=font, spacing=2)
    return canvas


def explain_png(model: RetrievalModel, image: ImageInput, text: str, out_path: str | Path | None = None, *,
                samples: int = 64, seed: int = 0) -> tuple[Explanation, bytes]:
    """Explain and draw; returns the explanation and the PNG bytes (also written to ``out_path``)."""
    explanation = explain(model, image, text, samples=samples, seed=seed)
    buf = io.BytesIO()
    render(explanation).save(buf, format="PNG")
    data = buf.getvalue()
    if out_path is not None:
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return explanation, data
