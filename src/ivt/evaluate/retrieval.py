"""Retrieval evaluation of an encoder on a dataset split: queries = every caption of the split,
gallery = every image of the split once; cosine similarity of the L2-normalised retrieval embeddings
(pooled as the model is configured: token 0, or the mean of the output tokens)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ivt.data import DataError, PedesDataset, Record, load_dataset
from ivt.data.image_bank import ImageBank
from ivt.evaluate.metrics import METRIC_KEYS, ranking_metrics
from ivt.inference import RetrievalModel, load


@dataclass
class SplitEmbeddings:
    image: torch.Tensor         # (G, C) L2-normalised
    image_pids: torch.Tensor    # (G,)
    text: torch.Tensor          # (Q, C) L2-normalised
    text_pids: torch.Tensor     # (Q,)
    text_image: torch.Tensor    # (Q,) index of the caption's own image
    captions: list[str]
    image_paths: list[Path]


def split_images(model: RetrievalModel, dataset: PedesDataset, records: Sequence[Record],
                 threads: int = 2) -> torch.Tensor:
    """uint8 images of ``records`` decoded and resized as ``model`` expects (the annotation entry
    is named when an image cannot be read)."""
    return ImageBank([dataset.image_path(r) for r in records], model.image_size, threads=threads,
                     interpolation=model.interpolation,
                     entries=[dataset.describe_entry(r) for r in records]).get(range(len(records)))


def embed_split(model: RetrievalModel, dataset: PedesDataset, records: Sequence[Record], batch_size: int = 64,
                images: torch.Tensor | None = None) -> SplitEmbeddings:
    """Embeddings of every image and caption of ``records`` (``images``: pre-decoded uint8)."""
    if not records:
        raise DataError(f"{dataset.annotation}: the evaluation split is empty")
    paths = [dataset.image_path(r) for r in records]
    if images is None:
        images = split_images(model, dataset, records)
    captions = [c for r in records for c in r.captions]
    text_image = torch.tensor([i for i, r in enumerate(records) for _ in r.captions])
    pids = torch.tensor([r.pid for r in records])
    return SplitEmbeddings(
        image=model.encode_images(images, batch_size),
        image_pids=pids,
        text=model.encode_texts(captions, batch_size * 4),
        text_pids=pids[text_image],
        text_image=text_image,
        captions=captions,
        image_paths=paths,
    )


def split_metrics(emb: SplitEmbeddings, i2t: bool = False, i2i: bool = False) -> dict:
    """Text-to-image metrics, and when asked image-to-text ones (prefixed ``i2t_``) and
    image-to-image ones (``i2i_``: each image a query against the others, itself left out; images
    alone with their identity in the split are not queries)."""
    result = ranking_metrics(emb.text @ emb.image.T, emb.text_pids, emb.image_pids)
    if i2t:
        back = ranking_metrics(emb.image @ emb.text.T, emb.image_pids, emb.text_pids)
        result.update({f"i2t_{k}": v for k, v in back.items() if not k.startswith("num_")})
    if i2i:
        with warnings.catch_warnings():   # lone images are no queries: said in the docstring, not warned
            warnings.simplefilter("ignore")
            same = ranking_metrics(emb.image @ emb.image.T, emb.image_pids, emb.image_pids, exclude_self=True)
        result.update({f"i2i_{k}": v for k, v in same.items() if k != "num_gallery"})
    return result


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, *, data_format: str = "auto",
                        split: str = "test", device: str = "auto", batch_size: int = 64,
                        which: str = "best", image_root: str | Path | None = None, i2t: bool = False,
                        precision: str = "auto", rerank: int = 0, i2i: bool = False) -> dict:
    """Load a trained run and report retrieval metrics on one split of a dataset; with ``rerank``
    K > 0, of the ranking whose top K per query the image-text matching head re-orders with the
    cosine (:func:`ivt.evaluate.rerank.fuse`; the cosine metrics are kept under ``cosine``)."""
    dataset = load_dataset(data, data_format, image_root=image_root)
    records = dataset.split(split)
    if not records:
        raise DataError(f"{dataset.annotation}: no '{split}' split (present: {', '.join(dataset.splits)})")
    model = load(checkpoint, device=device, which=which, precision=precision)
    if rerank:
        model.require_rerank()
    images = split_images(model, dataset, records)
    emb = embed_split(model, dataset, records, batch_size, images=images)
    result = {k: float(v) for k, v in split_metrics(emb, i2t, i2i).items()}
    if rerank:
        from ivt.evaluate.rerank import rerank_scores

        _, states = model.encode_images_with_states(images, batch_size)
        scores = rerank_scores(model, emb.text @ emb.image.T, emb.captions, states, rerank)
        cosine = {k: result[k] for k in METRIC_KEYS}
        result.update({k: float(v) for k, v in ranking_metrics(scores, emb.text_pids, emb.image_pids).items()})
        result.update({"cosine": cosine, "rerank": int(rerank), "rerank_weight": model.rerank_weight})
    for k in ("num_queries", "num_gallery", "num_skipped_queries"):
        result[k] = int(result[k])
    result.update({"split": split, "checkpoint": str(model.weights),
                   "epoch": model.meta.get("epoch")})
    return result


def format_metrics(result: dict) -> str:
    """A one-table summary of the metrics."""
    keys = METRIC_KEYS
    lines = [
        " ".join(f"{k:>7}" for k in keys),
        " ".join(f"{result[k]:7.2f}" for k in keys),
        f"{result['num_queries']} queries x {result['num_gallery']} gallery images"
        + (f" ({result['num_skipped_queries']} queries without a match skipped)"
           if result.get("num_skipped_queries") else ""),
    ]
    for prefix, what in (("i2i", "image to image"), ("i2t", "image to text")):
        if f"{prefix}_R1" in result:
            lines.insert(2, " ".join(f"{result[f'{prefix}_{k}']:7.2f}" for k in keys) + f"   ({what})")
    if "cosine" in result:
        lines[1] += (f"   (top {result['rerank']} re-ranked by image-text matching, weight "
                     f"{result['rerank_weight']:g})")
        lines.insert(2, " ".join(f"{result['cosine'][k]:7.2f}" for k in keys) + "   (cosine order)")
    return "\n".join(lines)
