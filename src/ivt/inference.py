"""The inference API: a trained run directory -> one object that embeds images and texts.

    import ivt
    model = ivt.load("runs/demo")                       # encoder + tokenizer + image transform
    sim = model.similarity(["a man in a red jacket"], ["a.jpg", "b.jpg"])   # (1, 2) cosine

Evaluation, the demo and search all go through this object, so an image is always decoded,
resized (with the model's own interpolation) and normalised (with the model's own mean/std)
the same way, and texts are tokenised with the run's own tokenizer and length.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image

from ivt.checkpoint import load_model, load_tokenizer, resolve_checkpoint
from ivt.errors import CheckpointError, ConfigError, DataError, ImageError, IvtError
from ivt.files import file_sha256
from ivt.runtime import autocast, precision_name, resolve_device, resolve_precision, to_device
from ivt.transforms import EvalTransform, load_image, pil_to_tensor

ImageInput = Union[str, os.PathLike, Image.Image, torch.Tensor]

__all__ = ["RetrievalModel", "load", "ImageInput"]


def _rerank_weight(meta: dict, weights: Path | None) -> float:
    """How much the matching head counts against the cosine when re-ranking
    (:func:`ivt.evaluate.rerank.fuse`): what training chose on validation, 1 where it chose none."""
    value = meta.get("rerank_weight", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < float("inf")):
        where = weights.with_suffix(".json") if weights else "the checkpoint's metadata"
        raise CheckpointError(f"{where}: rerank_weight must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_batch_size(batch_size: object) -> None:
    """A non-positive batch size would silently encode nothing (or fail deep in ``range``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def _as_list(values: object, name: str, single: tuple[type, ...], example: str) -> list:
    """``values`` as a list, refusing one bare item (a str would be iterated character by
    character, a (3, H, W) tensor channel by channel)."""
    if isinstance(values, single) or (isinstance(values, torch.Tensor) and values.dim() == 3):
        raise DataError(f"{name} must be a list, got a single {type(values).__name__}: pass [{example}] "
                        f"for one")
    try:
        return list(values)  # type: ignore[call-overload]
    except TypeError:
        raise DataError(f"{name} must be a list, got {type(values).__name__}") from None


def _image_size_of(image: ImageInput) -> tuple[int, ...] | None:
    """(width, height) of a PIL image / the shape of a tensor; None for paths."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, torch.Tensor):
        return tuple(image.shape)
    return None


def _preprocess_at(model: RetrievalModel, position: int, image: ImageInput) -> torch.Tensor:
    """``model.preprocess`` of ``images[position]``, with errors naming the position; an empty
    image is refused (resizing it would give a normal-looking embedding of nothing)."""
    size = _image_size_of(image)
    if size is not None and 0 in size:
        what = "x".join(map(str, size)) if isinstance(image, Image.Image) else str(size)
        raise ImageError(f"images[{position}] is empty ({type(image).__name__} of size {what}); nothing to encode")
    try:
        return model.preprocess(image)
    except IvtError as exc:
        raise type(exc)(f"images[{position}]: {exc}") from exc


class RetrievalModel:
    """An encoder with the tokenizer and image preprocessing it was trained with.

    ``encode_images`` / ``encode_texts`` return L2-normalised float32 ``(N, D)`` CPU tensors, so
    a dot product is the cosine similarity the model was evaluated with.
    """

    def __init__(self, encoder: torch.nn.Module, tokenizer, meta: dict, *, device: torch.device,
                 dtype: torch.dtype | None, run_dir: Path | None = None, weights: Path | None = None) -> None:
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.device = device
        self.dtype = dtype
        self.run_dir = run_dir
        self.weights = weights
        self.config = encoder.config
        self.image_size: tuple[int, int] = tuple(self.config.image_size)  # type: ignore[assignment]
        self.interpolation = self.config.eval_interpolation
        self.transform = EvalTransform(self.config.image_mean, self.config.image_std)
        self.embed_dim = int(self.config.width)
        self.fingerprint = meta.get("weights_sha256") or (file_sha256(weights) if weights else "")
        self.rerank_weight = _rerank_weight(meta, weights)
        self.tokenizer_fingerprint = hashlib.sha256(tokenizer.hf.to_str().encode()).hexdigest()

    def __repr__(self) -> str:
        c = self.config
        return (f"RetrievalModel(width={c.width}, depth={c.depth}, image={c.image_size[0]}x{c.image_size[1]}, "
                f"device={self.device}, precision={precision_name(self.dtype)}, run={self.run_dir})")

    # -- images ---------------------------------------------------------------------------
    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image (a path, a PIL image or a uint8 (3, H, W) tensor) -> uint8 (3, H, W) at the
        model's size."""
        if isinstance(image, (str, os.PathLike)):
            return load_image(image, self.image_size, self.interpolation)
        if isinstance(image, Image.Image):
            return pil_to_tensor(image, self.image_size, self.interpolation)
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
                raise ImageError(f"an image tensor must be uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}")
            if tuple(image.shape[1:]) == self.image_size:
                return image
            return pil_to_tensor(Image.fromarray(image.permute(1, 2, 0).numpy()), self.image_size,
                                 self.interpolation)
        raise ImageError(f"cannot use a {type(image).__name__} as an image (give a path, a PIL image or a uint8 "
                         f"(3, H, W) tensor)")

    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageInput] | torch.Tensor, batch_size: int = 64,
                      progress: bool = False) -> torch.Tensor:
        """L2-normalised embeddings ``(N, D)`` of images (paths, PIL images, uint8 tensors, or a
        uint8 ``(N, 3, H, W)`` batch already at the model's size)."""
        _check_batch_size(batch_size)
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, *self.image_size):
                raise ImageError(f"an image batch must be uint8 (N, 3, {self.image_size[0]}, {self.image_size[1]}), "
                                 f"got {images.dtype} {tuple(images.shape)}")
            batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
            total = len(images)
        else:
            images = _as_list(images, "images", (str, os.PathLike, Image.Image), "image")
            batches = (torch.stack([_preprocess_at(self, i + j, x) for j, x in enumerate(images[i:i + batch_size])])
                       for i in range(0, len(images), batch_size))
            total = len(images)
        out = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="encoding images", unit="img")
        for batch in batches:
            x = self.transform(to_device(batch, self.device))
            with autocast(self.device, self.dtype):
                out.append(self.encoder.encode_image(x).float())
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        if not out:
            return torch.empty(0, self.embed_dim)
        return F.normalize(torch.cat(out), dim=-1).cpu()

    # -- texts ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised embeddings ``(N, D)`` of a list of texts (truncated to the run's text length)."""
        _check_batch_size(batch_size)
        texts = _as_list(texts, "texts", (str, bytes), "text")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"texts[{i}] is a {type(text).__name__}, not a string")
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer(texts[start:start + batch_size])
            with autocast(self.device, self.dtype):
                out.append(self.encoder.encode_text(to_device(ids, self.device), to_device(mask, self.device)).float())
        if not out:
            return torch.empty(0, self.embed_dim)
        return F.normalize(torch.cat(out), dim=-1).cpu()

    # -- image-text matching (re-ranking) ---------------------------------------------------
    @property
    def can_rerank(self) -> bool:
        """Whether the model has an image-text matching head (trained with ``model.itm``)."""
        return getattr(self.encoder, "itm_head", None) is not None

    def require_rerank(self, option: str = "--rerank") -> None:
        """A clear error naming ``option`` when the model cannot re-rank."""
        if not self.can_rerank:
            raise CheckpointError(f"{option} needs a model trained with an image-text matching head "
                                  f"(model.itm=true); {self.run_dir or 'this model'} has none")

    @torch.inference_mode()
    def encode_images_with_states(self, images: Sequence[ImageInput] | torch.Tensor,
                                  batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised embeddings (N, D) and the tokens entering the joint blocks (N, T, D),
        float32 on the CPU: what a gallery caches to re-rank (see :meth:`match_scores`)."""
        self.require_rerank("image-text matching")
        _check_batch_size(batch_size)
        if not (isinstance(images, torch.Tensor) and images.dim() == 4):
            images = torch.stack([_preprocess_at(self, i, x) for i, x in
                                  enumerate(_as_list(images, "images", (str, os.PathLike, Image.Image), "image"))])
        embeddings, states = [], []
        for start in range(0, len(images), batch_size):
            x = self.transform(to_device(images[start:start + batch_size], self.device))
            with autocast(self.device, self.dtype):
                emb, st = self.encoder.encode_image_with_states(x)
            embeddings.append(emb.float())
            states.append(st.float().cpu())
        return F.normalize(torch.cat(embeddings), dim=-1).cpu(), torch.cat(states)

    @torch.inference_mode()
    def encode_texts_with_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised embeddings (N, D), the tokens entering the joint blocks (N, L, D) and
        their mask (N, L) of a batch of texts (one forward; float32 on the CPU)."""
        self.require_rerank("image-text matching")
        ids, mask = self.tokenizer(list(texts))
        with autocast(self.device, self.dtype):
            emb, states, mask = self.encoder.encode_text_with_states(to_device(ids, self.device),
                                                                     to_device(mask, self.device))
        return F.normalize(emb.float(), dim=-1).cpu(), states.float().cpu(), mask.cpu()

    @torch.inference_mode()
    def match_scores(self, image_states: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
                     batch_size: int = 256) -> torch.Tensor:
        """ITM log-odds (N,) of N image-text pairs given by their states (a single image or text is
        paired with every one of the other side): higher means a better match."""
        self.require_rerank("image-text matching")
        n = max(len(image_states), len(text_states))
        out = []
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            img = image_states if len(image_states) == 1 else image_states[part]
            txt, msk = (text_states, text_mask) if len(text_states) == 1 else (text_states[part], text_mask[part])
            with autocast(self.device, self.dtype):
                logits = self.encoder.itm_logits(to_device(img, self.device), to_device(txt, self.device),
                                                 to_device(msk, self.device))
            out.append(self.encoder.itm_score(logits).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def rerank(self, text: str, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """ITM log-odds of ``text`` against each of ``images`` (candidates to re-order)."""
        _, image_states = self.encode_images_with_states(images)
        _, text_states, text_mask = self.encode_texts_with_states([text])
        return self.match_scores(image_states, text_states, text_mask)

    def similarity(self, texts: Sequence[str], images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``(len(texts), len(images))``."""
        return self.encode_texts(texts) @ self.encode_images(images).T


def load(run_dir: str | os.PathLike, device: str = "auto", which: str = "best",
         precision: str = "auto") -> RetrievalModel:
    """Load a trained run (or a checkpoint ``.safetensors`` inside one) for inference.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. ``precision``:
    ``auto`` (bf16 autocast on CUDA that supports it, else fp16; on CPU bf16 only where this CPU
    runs it natively and a short probe measures it faster than fp32), ``fp32``, ``bf16`` or ``fp16``.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise CheckpointError(f"run_dir must be a path (str or os.PathLike), got {type(run_dir).__name__}")
    if which not in ("best", "last"):
        raise CheckpointError(f"which must be 'best' or 'last', got {which!r}")
    dev = resolve_device(device)
    encoder, meta = load_model(run_dir, which, dev)
    tokenizer = load_tokenizer(run_dir, meta, which)
    weights, _ = resolve_checkpoint(run_dir, which)
    dtype = resolve_precision(precision, dev, encoder=encoder)
    return RetrievalModel(encoder, tokenizer, meta, device=dev, dtype=dtype,
                          run_dir=weights.parent, weights=weights)
