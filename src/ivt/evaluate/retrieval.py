"""Retrieval evaluation of an encoder on a dataset split: queries = every caption of the split,
gallery = every image of the split once; cosine similarity of L2-normalised token-0 embeddings."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ivt.data import DataError, PedesDataset, Record, load_dataset
from ivt.data.image_bank import ImageBank
from ivt.evaluate.metrics import ranking_metrics
from ivt.model import IVTEncoder
from ivt.runtime import autocast, resolve_device, resolve_precision
from ivt.text.tokenizer import Tokenizer
from ivt.transforms import EvalTransform


@dataclass
class SplitEmbeddings:
    image: torch.Tensor         # (G, C) L2-normalised
    image_pids: torch.Tensor    # (G,)
    text: torch.Tensor          # (Q, C) L2-normalised
    text_pids: torch.Tensor     # (Q,)
    text_image: torch.Tensor    # (Q,) index of the caption's own image
    captions: list[str]
    image_paths: list[Path]


@torch.inference_mode()
def encode_images(model: IVTEncoder, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
                  batch_size: int = 64, transform: EvalTransform | None = None) -> torch.Tensor:
    """L2-normalised embeddings (N, C) of uint8 images (N, 3, H, W)."""
    transform = transform or EvalTransform()
    out = []
    for start in range(0, len(images), batch_size):
        batch = transform(images[start : start + batch_size]).to(device)
        with autocast(device, dtype):
            out.append(model.encode_image(batch).float())
    return F.normalize(torch.cat(out), dim=-1).cpu()


@torch.inference_mode()
def encode_texts(model: IVTEncoder, tokenizer: Tokenizer, texts: Sequence[str], device: torch.device,
                 dtype: torch.dtype | None, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised embeddings (N, C) of texts."""
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(list(texts[start : start + batch_size]))
        with autocast(device, dtype):
            out.append(model.encode_text(ids.to(device), mask.to(device)).float())
    return F.normalize(torch.cat(out), dim=-1).cpu()


def embed_split(model: IVTEncoder, tokenizer: Tokenizer, dataset: PedesDataset, records: Sequence[Record],
                device: torch.device, dtype: torch.dtype | None, batch_size: int = 64,
                images: torch.Tensor | None = None) -> SplitEmbeddings:
    """Embeddings of every image and caption of ``records`` (``images``: pre-decoded uint8)."""
    if not records:
        raise DataError(f"{dataset.annotation}: the evaluation split is empty")
    paths = [dataset.image_path(r) for r in records]
    if images is None:
        images = ImageBank(paths, tuple(model.config.image_size)).get(range(len(paths)))
    captions = [c for r in records for c in r.captions]
    text_image = torch.tensor([i for i, r in enumerate(records) for _ in r.captions])
    pids = torch.tensor([r.pid for r in records])
    return SplitEmbeddings(
        image=encode_images(model, images, device, dtype, batch_size),
        image_pids=pids,
        text=encode_texts(model, tokenizer, captions, device, dtype, batch_size * 4),
        text_pids=pids[text_image],
        text_image=text_image,
        captions=captions,
        image_paths=paths,
    )


def split_metrics(emb: SplitEmbeddings, i2t: bool = False) -> dict:
    """Text-to-image metrics (and image-to-text ones, prefixed ``i2t_``, when asked)."""
    result = ranking_metrics(emb.text @ emb.image.T, emb.text_pids, emb.image_pids)
    if i2t:
        back = ranking_metrics(emb.image @ emb.text.T, emb.image_pids, emb.text_pids)
        result.update({f"i2t_{k}": v for k, v in back.items() if not k.startswith("num_")})
    return result


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, *, data_format: str = "auto",
                        split: str = "test", device: str = "auto", batch_size: int = 64,
                        which: str = "best", image_root: str | Path | None = None, i2t: bool = False,
                        precision: str = "auto") -> dict:
    """Load a trained run and report retrieval metrics on one split of a dataset."""
    from ivt.checkpoint import load_model, load_tokenizer, resolve_checkpoint

    dev = resolve_device(device)
    model, meta = load_model(checkpoint, which, dev)
    weights, _ = resolve_checkpoint(checkpoint, which)
    tokenizer = load_tokenizer(checkpoint, meta, which)
    dataset = load_dataset(data, data_format, image_root=image_root)
    records = dataset.split(split)
    if not records:
        raise DataError(f"{dataset.annotation}: no '{split}' split (present: {', '.join(dataset.splits)})")
    emb = embed_split(model, tokenizer, dataset, records, dev, resolve_precision(precision, dev), batch_size)
    result = {k: float(v) for k, v in split_metrics(emb, i2t).items()}
    for k in ("num_queries", "num_gallery", "num_skipped_queries"):
        result[k] = int(result[k])
    result.update({"split": split, "checkpoint": str(weights), "epoch": meta.get("epoch")})
    return result


def format_metrics(result: dict) -> str:
    """A one-table summary of the metrics."""
    keys = ["R1", "R5", "R10", "mAP", "mINP"]
    lines = [
        " ".join(f"{k:>7}" for k in keys),
        " ".join(f"{result[k]:7.2f}" for k in keys),
        f"{result['num_queries']} queries x {result['num_gallery']} gallery images"
        + (f" ({result['num_skipped_queries']} queries without a match skipped)"
           if result.get("num_skipped_queries") else ""),
    ]
    if "i2t_R1" in result:
        lines.insert(2, "i2t " + " ".join(f"{result['i2t_' + k]:7.2f}" for k in keys)[4:])
    return "\n".join(lines)
