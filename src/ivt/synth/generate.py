"""Write a SynthPedes dataset in the CUHK-PEDES raw layout (``reid_raw.json`` + ``imgs/``)."""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import operator
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ivt.errors import ConfigError
from ivt.synth.attributes import IdentityEntry, sample_identities
from ivt.synth.captions import attribute_phrases, captions, tokenize
from ivt.synth.preview import write_preview
from ivt.synth.scene import Camera, make_cameras, render_image
from ivt.synth.visibility import VIEWS, visible_slots

MARKER = "synthpedes.json"
ANNOTATION = "reid_raw.json"
ATTRIBUTES = "attributes.json"
IMAGE_DIR = "imgs"
FORMAT_VERSION = 2  # 2: shaded figures, elevated cameras, camera JPEG, light blue, 2:1 images
NUM_CAMERAS = 6
SPLITS = ("train", "val", "test")
P_POLE, P_CAR = 0.07, 0.08
JPEG_QUALITY = 90
#: Largest image side: the renderer keeps several float copies of an image (about 200 bytes per
#: pixel, ~0.9 GB per worker at 2048x2048), so larger sizes exhaust memory.
MAX_SIDE = 2048
MAX_IMAGES_PER_ID = 100
#: Largest draw (num_ids x the most images of an id): every image's annotation (~8 KB in memory)
#: is held until the annotation files are written at the end.
MAX_IMAGES = 1_000_000


def _validate(num_ids: int, image_size: tuple[int, int], images_per_id: tuple[int, int],
              split_fractions: tuple[float, float, float], hard_negative_fraction: float) -> None:
    if isinstance(num_ids, bool) or not isinstance(num_ids, int) or num_ids < 3:
        raise ConfigError(f"num_ids must be an integer >= 3 so every split gets an identity, got {num_ids!r}")
    if len(image_size) != 2 or image_size[0] < 48 or image_size[1] < 16:
        raise ConfigError(f"image_size must be (height, width) with height >= 48 and width >= 16, got {image_size!r}")
    if image_size[0] < image_size[1]:
        raise ConfigError(f"image_size is (height, width) and pedestrians are tall: got {image_size!r}")
    if max(image_size) > MAX_SIDE:
        raise ConfigError(f"image_size: height and width must be at most {MAX_SIDE} pixels (the renderer needs "
                          f"about 200 bytes of memory per pixel, ~0.9 GB per image at {MAX_SIDE}x{MAX_SIDE}), "
                          f"got {image_size!r}")
    lo, hi = images_per_id
    if not (1 <= lo <= hi):
        raise ConfigError(f"images_per_id must be (min, max) with 1 <= min <= max, got {images_per_id!r}")
    if hi > MAX_IMAGES_PER_ID:
        raise ConfigError(f"images_per_id: at most {MAX_IMAGES_PER_ID} images of one identity, got {images_per_id!r}")
    if num_ids * hi > MAX_IMAGES:
        raise ConfigError(f"num_ids x images_per_id max = {num_ids * hi:,} images exceeds {MAX_IMAGES:,} (the "
                          f"annotation of every image, ~8 KB, is held in memory until it is written); "
                          f"ask for fewer ids or images per id")
    if len(split_fractions) != 3 or any(f <= 0 for f in split_fractions) or abs(sum(split_fractions) - 1) > 1e-6:
        raise ConfigError(f"split_fractions must be three positive numbers (train, val, test) summing to 1, "
                         f"got {split_fractions!r}")
    if not 0.0 <= hard_negative_fraction <= 1.0:
        raise ConfigError(f"hard_negative_fraction must be in [0, 1], got {hard_negative_fraction!r}")


def _is_previous_output(out: Path) -> bool:
    """Whether ``out`` holds ivt's SynthPedes marker (written when a generation starts)."""
    try:
        return json.loads((out / MARKER).read_text()).get("generator") == "synthpedes"
    except (OSError, ValueError, AttributeError):
        return False


def _prepare(out: Path, force: bool, made_by: str) -> None:
    """Create ``out``, or replace a previous SynthPedes output in it with ``force``; refuse anything else.

    The marker is rewritten as unfinished before anything is deleted, so an output that a
    crash leaves half-written is never mistaken for a complete draw (and ``force`` can replace it).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not _is_previous_output(out):
            raise ConfigError(f"{out} is not empty and is not a previous SynthPedes output "
                             f"(no {MARKER} written by ivt); refusing to write into it, even with --force. "
                             "Choose an empty or new directory.")
        if not force:
            raise ConfigError(f"{out} already holds a SynthPedes output (runs and indexes built on it use its "
                             f"images); pass --force to replace it, or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"generator": "synthpedes", "made_by": made_by, "complete": False}),
                              encoding="utf-8")
    if (out / IMAGE_DIR).is_dir():
        shutil.rmtree(out / IMAGE_DIR)
    (out / IMAGE_DIR).mkdir()


def split_counts(num_ids: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Identities per split: val and test rounded, at least one each; train gets the rest (>= 1)."""
    val = max(1, round(num_ids * fractions[1]))
    test = max(1, round(num_ids * fractions[2]))
    while num_ids - val - test < 1:
        if val >= test:
            val -= 1
        else:
            test -= 1
    return {"train": num_ids - val - test, "val": val, "test": test}


def _views(n: int, rng: random.Random) -> list[str]:
    """Views for one identity's images: front, back and a side first, then any."""
    first = ["front", "back", rng.choice(("left", "right"))]
    rng.shuffle(first)
    return (first + [rng.choice(VIEWS) for _ in range(max(0, n - 3))])[:n]


def _render_identity(entry: IdentityEntry, n: int, out: Path, cams: list[Camera], size: tuple[int, int],
                     seed: int, width: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(f"synthpedes/{seed}/{entry.pid}")
    views = _views(n, rng)
    cam_ids = rng.sample(range(len(cams)), n) if n <= len(cams) else [rng.randrange(len(cams)) for _ in range(n)]
    folder = f"{entry.split}/{entry.pid:0{width}d}"
    (out / IMAGE_DIR / folder).mkdir(parents=True, exist_ok=True)
    rows, metas = [], []
    for k, (view, ci) in enumerate(zip(views, cam_ids)):
        irng = random.Random(f"synthpedes/{seed}/{entry.pid}/{k}")
        u = irng.random()
        occluder = "pole" if u < P_POLE else "car" if u < P_POLE + P_CAR else None
        vis = visible_slots(entry.identity, view, occluder)
        img = render_image(entry.identity, view, vis, occluder, cams[ci], size, irng,
                           np.random.default_rng(irng.getrandbits(64)))
        rel = f"{folder}/{entry.pid:0{width}d}_c{cams[ci].index}_s{k + 1}.jpg"
        img.save(out / IMAGE_DIR / rel, "JPEG", quality=JPEG_QUALITY)
        caps = captions(entry.identity, vis, view, irng, n=2)
        rows.append({"split": entry.split, "captions": caps, "file_path": rel,
                     "processed_tokens": [tokenize(c) for c in caps], "id": entry.pid,
                     "att": attribute_phrases(entry.identity, vis)})
        metas.append({"file_path": rel, "view": view, "camera": cams[ci].index, "occluder": occluder,
                      "visible": sorted(vis)})
    return rows, metas


def _render_chunk(jobs: list[tuple]) -> list[tuple[list[dict], list[dict]]]:
    return [_render_identity(*job) for job in jobs]


def generate_synthpedes(out_dir: str | Path, num_ids: int = 600, seed: int = 0, *,
                        image_size: tuple[int, int] = (160, 80),
                        images_per_id: tuple[int, int] = (2, 5),
                        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                        hard_negative_fraction: float = 0.5,
                        progress: bool = False, workers: int = 1, force: bool = False,
                        made_by: str = "synth") -> dict:
    """Generate SynthPedes into ``out_dir`` and return a summary (ids/images/captions per split, seconds).

    Same arguments give byte-identical files, whatever ``workers`` (processes rendering
    identities in parallel: every identity draws from its own seeded generator).
    ``image_size`` is (height, width). A non-empty ``out_dir`` is only accepted when it holds a
    previous SynthPedes output and ``force`` is given: its ``imgs/`` is then replaced (other files
    stay). ``made_by`` is recorded in the marker (``ivt demo`` regenerates only its own draws).
    """
    start = time.perf_counter()
    try:
        num_ids = operator.index(num_ids)
    except TypeError:
        raise ConfigError(f"num_ids must be an integer, got {num_ids!r}") from None
    image_size = tuple(int(v) for v in image_size)  # type: ignore[assignment]
    images_per_id = tuple(int(v) for v in images_per_id)  # type: ignore[assignment]
    split_fractions = tuple(float(v) for v in split_fractions)  # type: ignore[assignment]
    _validate(num_ids, image_size, images_per_id, split_fractions, hard_negative_fraction)
    out = Path(out_dir)
    _prepare(out, force, made_by)
    counts = split_counts(num_ids, split_fractions)
    entries = sample_identities(counts, hard_negative_fraction, random.Random(f"synthpedes/{seed}/ids"))
    cams = make_cameras(random.Random(f"synthpedes/{seed}/cameras"), NUM_CAMERAS)
    count_rng = random.Random(f"synthpedes/{seed}/counts")
    width = max(4, len(str(num_ids)))
    rows: list[dict] = []
    records: dict[str, dict] = {}
    jobs = [(entry, count_rng.randint(*images_per_id), out, cams, image_size, seed, width) for entry in entries]
    size = max(1, min(25, -(-len(jobs) // (4 * max(workers, 1)))))  # a few chunks per worker
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    for split in SPLITS:
        (out / IMAGE_DIR / split).mkdir(exist_ok=True)
    parallel = workers > 1 and len(chunks) > 1
    with (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if parallel
          else contextlib.nullcontext()) as pool:
        rendered = (r for chunk in (pool.map(_render_chunk, chunks) if parallel else map(_render_chunk, chunks))
                    for r in chunk)
        if progress:
            from tqdm import tqdm
            rendered = tqdm(rendered, total=len(jobs), desc="SynthPedes", unit="id")
        for entry, (id_rows, metas) in zip(entries, rendered):
            rows.extend(id_rows)
            records[str(entry.pid)] = {"split": entry.split, "derived_from": entry.derived_from,
                                       "changed": list(entry.changed), "attributes": entry.identity.to_dict(),
                                       "images": metas}
    (out / ANNOTATION).write_text(json.dumps(rows), encoding="utf-8")
    (out / ATTRIBUTES).write_text(json.dumps(records, indent=1), encoding="utf-8")
    params = {"num_ids": num_ids, "seed": seed, "image_size": list(image_size),
              "images_per_id": list(images_per_id), "split_fractions": list(split_fractions),
              "hard_negative_fraction": hard_negative_fraction}
    summary = {
        "ids": dict(counts),
        "images": {s: sum(r["split"] == s for r in rows) for s in SPLITS},
        "captions": {s: sum(len(r["captions"]) for r in rows if r["split"] == s) for s in SPLITS},
        "hard_negatives": sum(e.derived_from is not None for e in entries),
    }
    marker = {"generator": "synthpedes", "made_by": made_by, "complete": True, "version": FORMAT_VERSION,
              "params": params, "summary": summary,
              "cameras": [c.to_dict() for c in cams]}
    (out / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    return {**summary, "out_dir": str(out), "seconds": round(time.perf_counter() - start, 3)}


__all__ = ["generate_synthpedes", "split_counts", "write_preview"]
