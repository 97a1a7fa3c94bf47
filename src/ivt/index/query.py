"""Queries against an index: a description, an example image of the person ("find this person":
a file, or an item of the index), or both; opening the index with its own model, ranked results
as JSON-ready data, a terminal table and a self-contained HTML grid. The CLI and the web service
share these."""
from __future__ import annotations

import html
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ivt.errors import CheckpointError, DataError, IndexStoreError, IvtError
from ivt.index.filters import SearchFilter
from ivt.index.gallery import Gallery, Hit
from ivt.index.milvus import is_milvus
from ivt.index.milvus_gallery import MilvusGallery
from ivt.index.same_person import SamePersonSettings, same_person_order
from ivt.index.store import read_index
from ivt.terminal import printable
from ivt.viz import image_data_uri

if TYPE_CHECKING:
    from ivt.inference import RetrievalModel


def open_for_search(index_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
                    search_params: dict[str, int] | None = None,
                    precision: str = "auto") -> tuple[Gallery | MilvusGallery, RetrievalModel]:
    """The verified index and the model it was built with (from its manifest, or ``checkpoint``
    when the run directory has moved), refusing any other model or tokenizer.
    ``precision``: the query encoder's own (the index's embeddings are float32 whatever precision
    encoded them, so a search need not repeat the build's)"""
    gallery = open_gallery(index_dir, search_params)
    built = gallery.manifest["model"]
    model = index_model(gallery.directory, built, checkpoint, device, precision)
    source = f"checkpoint {checkpoint or built['checkpoint']}"
    gallery.check_model(model.fingerprint, model.tokenizer_fingerprint, source, model.config.preprocessing())
    return gallery, model


def open_gallery(location: str | Path, search_params: dict[str, int] | None = None) -> Gallery | MilvusGallery:
    """An index opened for search: a directory (ivt's store) or ``milvus:URI#COLLECTION``."""
    if is_milvus(location):
        return MilvusGallery.open(str(location), search_params)
    return Gallery.open(location, search_params)


def index_manifest(location: str | Path) -> dict[str, Any]:
    """The manifest of an index (its model entry names the checkpoint it was built with)."""
    if is_milvus(location):
        from ivt.index import milvus

        address = milvus.parse_address(str(location))
        return milvus.read_manifest(milvus.connect(address), address)
    return read_index(location, verify=False).manifest


def encode_query(model: RetrievalModel, text: str) -> tuple[np.ndarray, list[str]]:
    """The embedding of a description and the words left out of it: those the model's closed
    vocabulary never saw in training. DataError when no word of the description is known (the
    query would be empty and rank the gallery by nothing)."""
    ignored = model.tokenizer.words_left_out(text)
    return model.encode_texts([text])[0].numpy(), ignored


@dataclass(frozen=True)
class Example:
    """An example image of the person sought: its unit embedding, what to call it, and the index
    item it is (left out of the results, with its whole track when searching per track) with that
    item's camera (None when unknown: a photo the index does not hold)."""

    vector: np.ndarray
    label: str
    item: int | str | None = None
    track: int | None = None
    camera: str | None = None


def example_ranking(text: str | None, cosine: bool = False) -> SamePersonSettings | None:
    """How hits are ordered: an example alone as :mod:`ivt.index.same_person` finds one person
    (unless ``cosine``); anything with a description by cosine (None)."""
    return SamePersonSettings() if text is None and not cosine else None


def example_item(gallery: Gallery | MilvusGallery, raw_id: str) -> Example:
    """An item of the index as the example (its stored embedding: nothing is re-encoded)."""
    item = gallery.parse_id(str(raw_id))
    if item is None:
        raise DataError(f"--item {str(raw_id)[:70]!r}: no such item in this index")
    span = gallery.track_of(item)
    vectors, cameras = gallery.vectors([item])
    return Example(vectors[0], f"item {str(item)[:12]}", item, span.track if span else None, cameras[0])


def example_file(gallery: Gallery | MilvusGallery, model: RetrievalModel, path: str | Path) -> Example:
    """An image file as the example; when the index holds these very bytes, that item is left out."""
    from ivt.files import file_sha256

    p = Path(path)
    if not p.is_file():
        raise DataError(f"--image {p}: not a file")
    try:
        with Image.open(p) as img:
            img.load()
            vector = model.encode_images([img.convert("RGB")])[0].numpy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"--image {p}: not a readable image ({exc})") from exc
    item = gallery.item_with_sha256(file_sha256(p))
    if item is None:
        return Example(vector, p.name)
    span = gallery.track_of(item)
    return Example(vector, p.name, item, span.track if span else None, gallery.vectors([item])[1][0])


def combined_query(text_vector: np.ndarray | None, example: Example | None) -> np.ndarray:
    """The query vector: the description's, the example's, or, with both, their normalised sum (a
    person like the example and as described)."""
    vectors = [v for v in (text_vector, None if example is None else example.vector) if v is not None]
    if not vectors:
        raise DataError("a search needs a description, an example image, or both")
    total = np.sum(np.asarray(vectors, dtype=np.float32), axis=0)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm == 0.0:
        raise CheckpointError("the query has no direction (NaN or zero embedding); the model's weights are damaged")
    return total / norm


def query_label(text: str | None, example: Example | None) -> str:
    """How a query is named in output: the quoted description and/or 'like <example>'."""
    parts = ([f'"{text}"'] if text else []) + ([f"like {example.label}"] if example is not None else [])
    return " ".join(parts)


def ignored_note(ignored: list[str]) -> str:
    """One line naming the words a search left out ('' when none)."""
    if not ignored:
        return ""
    return "left out (words this model never saw in training): " + ", ".join(printable(w) for w in ignored)


def index_model(index_dir: str | Path, built: dict[str, Any], checkpoint: str | Path | None = None,
                device: str = "auto", precision: str = "auto") -> RetrievalModel:
    """The model of the index at ``index_dir`` whose manifest says ``built`` (its ``model`` entry):
    the checkpoint (best or last) the build used, from the run directory it names or ``checkpoint``
    when the run has moved. Not checked against the index here (the caller does, by fingerprint)."""
    import ivt

    run, which = Path(checkpoint or built["checkpoint"]), built.get("which", "best")
    if run.is_dir() and not (run / f"{which}.safetensors").exists():
        raise IndexStoreError(f"index {index_dir}: {run} has no {which}.safetensors, the checkpoint the index was "
                              f"built with; pass --checkpoint with the run directory it came from")
    try:
        return ivt.load(run, device=device, which=which, precision=precision)
    except IvtError as exc:
        raise IndexStoreError(f"index {index_dir}: cannot load its model from {run} ({exc}); "
                              f"pass --checkpoint if the run directory has moved") from exc


def results(gallery: Gallery | MilvusGallery, query: np.ndarray, k: int, per_track: bool = False,
            rerank: tuple[RetrievalModel, str, int] | None = None,
            where: SearchFilter | None = None, example: Example | None = None,
            same_person: SamePersonSettings | None = None) -> list[dict[str, Any]]:
    """Ranked hits of an encoded ``query`` as JSON-ready dicts (rank, id, score, image_url,
    provenance); every score is a finite number (JSON has no NaN), else a CheckpointError.

    ``rerank`` = (model, text, K): the cosine's top K are re-ordered by the model's image-text
    matching head together with the cosine (:func:`ivt.evaluate.rerank.fuse`, weighted as the
    model's training chose; each hit of them also gets ``match``, its ITM log-odds); below K, cosine
    order.
    ``where``: only hits that pass these metadata filters (camera, time, track, minimum score).
    ``example``: the example image's own item is left out (per track: its whole track).
    ``same_person`` (the query is ``example`` alone): ranked as :mod:`ivt.index.same_person` finds
    one person in many images (camera-centred, k-reciprocal re-ranking); scores stay cosines.
    """
    if not np.isfinite(np.asarray(query, dtype=np.float64)).all():
        raise CheckpointError("the model gave NaN or infinite values for the query: its weights are damaged "
                              "(retrain or restore the run directory); no results")
    if same_person is not None and example is not None and rerank is None:
        hits = _same_person_hits(gallery, example, k, per_track, where, same_person)
    else:
        hits = _cosine_hits(gallery, query, max(k, rerank[2]) if rerank else k, per_track, where, example)
    if not all(np.isfinite(hit.score) for hit in hits):
        raise IndexStoreError(f"index {gallery.directory}: a search score is NaN or infinite; rebuild the index")
    matches: dict[int | str, float] = {}
    if rerank and hits:
        import torch

        from ivt.evaluate.rerank import fuse  # torch only when re-ranking (as the model itself)

        model, text, top_k = rerank
        top = hits[:top_k]
        images = [Image.open(io.BytesIO(gallery.read_image(hit.id))) for hit in top]
        scores = model.rerank(text, images)
        fused = fuse(scores, torch.tensor([hit.score for hit in top]), model.rerank_weight).tolist()
        order = sorted(range(len(top)), key=lambda i: -fused[i])
        hits = [top[i] for i in order] + hits[top_k:]
        matches = {top[i].id: float(scores[i]) for i in range(len(top))}
    return [{"rank": rank, "id": hit.id, "score": round(hit.score, 6),
             **({"match": round(matches[hit.id], 4)} if hit.id in matches else {}),
             "image_url": f"/api/images/{hit.id}", "provenance": gallery.describe(hit.id, hit.track)}
            for rank, hit in enumerate(hits[:k], 1)]


def _cosine_hits(gallery: Gallery | MilvusGallery, query: np.ndarray, depth: int, per_track: bool,
                 where: SearchFilter | None, example: Example | None) -> list[Hit]:
    """The best ``depth`` hits by cosine, the example's own item (per track: its track) left out."""
    hits = gallery.search(query, depth + int(_left_out(example)), per_track=per_track, where=where)
    return [h for h in hits if not _is_example(h, example, per_track)][:depth]


def _left_out(example: Example | None) -> bool:
    return example is not None and example.item is not None


def _is_example(hit: Hit, example: Example | None, per_track: bool) -> bool:
    """Whether ``hit`` is the example's own item, or with ``per_track`` of the example's track."""
    if not _left_out(example):
        return False
    own_track = example.track if per_track else None
    return hit.id == example.item or (own_track is not None and hit.track is not None and hit.track.track == own_track)


def _same_person_hits(gallery: Gallery | MilvusGallery, example: Example, k: int, per_track: bool,
                      where: SearchFilter | None, settings: SamePersonSettings) -> list[Hit]:
    """The best ``k`` hits for an example image: a pool of cosine candidates (filters applied),
    re-scored with camera-centred embeddings and re-ranked k-reciprocally; per track, each track's
    best-placed crop. Fewer than ``k`` tracks in the pool: the rest by plain per-track cosine."""
    pool_size = max(settings.pool, 8 * k, settings.candidates)
    pool = [h for h in gallery.search(example.vector, pool_size + 1, where=where)
            if not (_left_out(example) and h.id == example.item)]
    if not pool:
        return []
    vectors, cameras = gallery.vectors([h.id for h in pool])
    query = example.vector
    if settings.centre:
        means = gallery.camera_means()
        query = means.centred(example.vector[None], [example.camera])[0]
        vectors = means.centred(vectors, cameras)
    order, _ = same_person_order(query, vectors, settings)
    ranked = [pool[j] for j in order]
    if not per_track:
        return ranked[:k]

    def candidates() -> Iterator[Hit]:
        yield from ranked
        yield from _cosine_hits(gallery, example.vector, k, True, where, example)     # only when needed

    hits: list[Hit] = []
    seen: set[Any] = set()
    for hit in candidates():
        track = gallery.track_number(hit.id)
        key = ("track", track) if track is not None else ("item", hit.id)
        if key in seen or (_left_out(example) and track is not None and track == example.track):
            continue
        seen.add(key)
        hits.append(Hit(hit.id, hit.score, None if track is None else gallery.track_of(hit.id)))
        if len(hits) == k:
            break
    return hits


def _short_id(item_id: int | str) -> str:
    """An id for the table: a row number, or the first 12 hex digits of a Milvus item's sha256
    (the JSON output has the whole id)."""
    return str(item_id)[:12]


def _fmt_time(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}:{rest:04.1f}" if minutes else f"{rest:.1f} s"


def describe_short(provenance: dict[str, Any]) -> str:
    """One line for a hit: the file (and person id), or the video, frame, time and track span."""
    if "video" in provenance:
        text = f"{provenance['video']} frame {provenance['frame']} ({_fmt_time(provenance['time'])})"
        if provenance.get("track_items", 1) > 1:
            text += (f", track {provenance['track']} {_fmt_time(provenance['track_start'])}"
                     f"-{_fmt_time(provenance['track_end'])} ({provenance['track_items']} crops)")
        return text
    return provenance["path"] + (f" (id {provenance['pid']})" if "pid" in provenance else "")


def format_results(label: str, hits: list[dict[str, Any]], gallery: Gallery | MilvusGallery,
                   took_ms: float | None = None) -> str:
    """A terminal table of ranked hits; the query (its :func:`query_label`) and file names with
    control characters escaped."""
    backend = printable(gallery.manifest["backend"]["name"])
    timing = f", {took_ms:.1f} ms" if took_ms is not None else ""
    lines = [f'query: {printable(label)}  ({len(gallery)} indexed images, {backend} search{timing})',
             f"{'rank':>4}  {'score':>6}  {'id':>6}  image"]
    reranked = any("match" in h for h in hits)
    if reranked:
        lines[1] = f"{'rank':>4}  {'score':>6}  {'match':>7}  {'id':>6}  image"
    lines += [f"{h['rank']:>4}  {h['score']:6.3f}  " + (f"{h['match']:7.2f}  " if "match" in h else
                                                        ("         " if reranked else ""))
              + f"{_short_id(h['id']):>6}  {printable(describe_short(h['provenance']))}" for h in hits]
    if not hits:
        lines.append("  (no results)")
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;margin:24px;color:#111}h1{font-size:1.2rem}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:14px}"
        "figure{margin:0;border:1px solid #ccc;border-radius:8px;padding:6px;background:#fff}"
        "img{width:100%;height:240px;object-fit:contain;background:#eee}"
        "figcaption{font-size:.8rem;line-height:1.3}.s{font-weight:600}.p{color:#666;word-break:break-all}")


def results_html(label: str, hits: list[dict[str, Any]], gallery: Gallery | MilvusGallery,
                 out_path: str | Path) -> Path:
    """A self-contained HTML page (images embedded) of the ranked hits of a query (its
    :func:`query_label`); returns its path."""
    cards = []
    for h in hits:
        uri = image_data_uri(gallery.read_image(h["id"]))
        cards.append(f"<figure><img src='{uri}' alt='result {h['rank']}'><figcaption>"
                     f"<span class='s'>#{h['rank']} &nbsp; {h['score']:.3f}</span><br>"
                     f"<span class='p'>{html.escape(describe_short(h['provenance']))}</span></figcaption></figure>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ivt search: "
            f"{html.escape(label)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(label)}</h1><p>top {len(hits)} of {len(gallery)} indexed images "
            f"({html.escape(gallery.manifest['backend']['name'])} search)</p>"
            f"<div class='grid'>{''.join(cards)}</div></body></html>\n")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
