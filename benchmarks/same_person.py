"""Find this person: how the shipped ranking of an example image (ivt.index.same_person: camera
centring, then k-reciprocal re-ranking of the best candidates) was chosen, and what it gives.

    python benchmarks/same_person.py --runs RUN [RUN ...] [--choose] [--select 6001 6002 6003 6004]
                                     [--fresh 7001 7002 7003 7004 7005] [--write]

No training: the best checkpoints of runs of section i2i (``benchmarks/i2i.py``), each evaluated in
the precision it was trained in. Every image of a split is a query against the split's other images
(itself left out), ranked by the product's own code (:func:`ivt.index.same_person.same_person_order`
and :class:`~ivt.index.same_person.CameraMeans`, the camera of each image from SynthPedes's
per-image metadata; the gallery's own means, as an index holds them).

1. **Choice** (``--choose``, with the runs given) on selection draws (``--select``: val and test
   splits, seeds never reported): every k1 / k2 / lambda / candidates of the grid, image-to-image R1
   gain over camera centring alone, mean over the runs. The best is what
   :class:`SamePersonSettings` ships; the script says whether they agree. Kept in
   ``benchmarks/same_person_choice.json`` (runs added later do not change it).
2. **Figures** on fresh draws (``--fresh``, test splits, never used to choose): image-to-image R1 /
   mAP by plain cosine, k-reciprocal alone, camera centring alone, and both (the shipped ranking);
   text-to-image R1, which the ranking leaves alone (text queries are not re-ranked); on the real
   crops of vtest.avi (one camera: centring takes the mean of all crops), image-to-image R1 / mAP.
   The cost of ranking one query (centring a pool of 400 cosine candidates, re-ranking the best) on
   this machine.

Rows kept in ``benchmarks/same_person_rows.json``; ``--write`` renders section ``same-person``.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from i2i import ROWS, image_cameras, mean_sd
from ivt.data import load_dataset
from ivt.evaluate.metrics import ranking_metrics
from ivt.evaluate.retrieval import embed_split, split_images
from ivt.index.same_person import NO_CAMERA, CameraMeans, SamePersonSettings, same_person_order
from ivt.inference import load
from ivt.runtime import cpu_info
from learning import ensure_draw
from real_transfer import REAL, image_to_image, load_spec
from results_md import keep_rows, load_rows, write_section

SAME_PERSON_ROWS = Path(__file__).with_name("same_person_rows.json")
GRID = [SamePersonSettings(candidates=m, k1=k1, k2=k2, lam=lam)
        for k1, k2, lam, m in itertools.product((3, 4, 6), (1, 2, 3), (0.3, 0.6), (10, 20, 30, 50, 100))]
POOL = SamePersonSettings().pool


@dataclasses.dataclass
class Split:
    """Unit image embeddings of a split, with their identities and cameras (and the text R1)."""

    images: np.ndarray
    pids: torch.Tensor
    cameras: list[str]
    text_R1: float


def embed(model, draw: Path, split: str) -> Split:
    """The image embeddings of one split of a draw, with the split's text-to-image R1."""
    dataset = load_dataset(draw)
    records = dataset.split(split)
    emb = embed_split(model, dataset, records, 64, images=split_images(model, dataset, records))
    text_r1 = float(ranking_metrics(emb.text @ emb.image.T, emb.text_pids, emb.image_pids)["R1"])
    cameras = [str(int(c)) for c in image_cameras(draw, emb.image_paths)]
    return Split(emb.image.float().numpy(), emb.image_pids, cameras, text_r1)


def ranked(x: np.ndarray, cameras: list[str], centre: bool, settings: SamePersonSettings) -> torch.Tensor:
    """(N, N) scores that order each row's other images as the ranking does (higher first)."""
    z = CameraMeans.of(x, cameras).centred(x, cameras) if centre else x
    n = len(z)
    scores = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        order, _ = same_person_order(z[i], z[others], settings)
        scores[i, others[order]] = n - np.arange(len(order))
    return torch.from_numpy(scores)


def i2i(split: Split, centre: bool, settings: SamePersonSettings) -> dict:
    """Image-to-image R1 and mAP of a split ranked one way (each image a query, itself left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # lone images are no queries
        m = ranking_metrics(ranked(split.images, split.cameras, centre, settings), split.pids, split.pids,
                            exclude_self=True)
    return {"R1": float(m["R1"]), "mAP": float(m["mAP"])}


PLAIN = SamePersonSettings(centre=False, candidates=0)
CENTRED = SamePersonSettings(candidates=0)
WAYS = {"cosine": (False, PLAIN), "k-reciprocal": (False, SamePersonSettings()),
        "centred": (True, CENTRED), "shipped": (True, SamePersonSettings())}


def choose(selection: dict[str, list[Split]]) -> list[dict]:
    """The grid's mean R1 gain over centring alone on the selection splits, per run and overall."""
    base = {run: statistics.mean(i2i(s, True, CENTRED)["R1"] for s in splits) for run, splits in selection.items()}
    out = []
    for settings in GRID:
        gains = {run: statistics.mean(i2i(s, True, settings)["R1"] for s in splits) - base[run]
                 for run, splits in selection.items()}
        out.append({"settings": dataclasses.asdict(settings), "gain": round(statistics.mean(gains.values()), 2),
                    "per_run": {run: round(g, 2) for run, g in gains.items()}})
    return sorted(out, key=lambda r: -r["gain"])


def cost_ms(split: Split, settings: SamePersonSettings, repeats: int = 200) -> float:
    """Milliseconds to rank one query as an index does: centre a pool of POOL candidates, re-rank."""
    rng = np.random.default_rng(0)
    picked = split.images[rng.integers(0, len(split.images), POOL)]
    pool = picked + 0.01 * rng.normal(size=picked.shape)
    pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float32)
    cameras = [split.cameras[i % len(split.cameras)] for i in range(POOL)]
    means = CameraMeans.of(split.images, split.cameras)
    start = time.perf_counter()
    for r in range(repeats):
        q = means.centred(pool[r % POOL][None], [cameras[r % POOL]])[0]
        same_person_order(q, means.centred(pool, cameras), settings)
    return 1000 * (time.perf_counter() - start) / repeats


def pool_recall(model, draw: Path, queries: int = 500, top: int = 50) -> dict:
    """How much of the exact camera-centred top ``top`` over a whole large gallery (every image of
    ``draw``) the index's pool holds: the POOL best by plain cosine, which it re-scores."""
    dataset = load_dataset(draw)
    records = [r for split in dataset.splits for r in dataset.split(split)]
    x = model.encode_images(split_images(model, dataset, records), 64).float().numpy()
    cameras = [str(int(c)) for c in image_cameras(draw, [dataset.image_path(r) for r in records])]
    z = CameraMeans.of(x, cameras).centred(x, cameras)
    held = []
    for i in np.random.default_rng(0).choice(len(x), size=min(queries, len(x)), replace=False):
        exact = set(np.argsort(-(z @ z[i]), kind="stable")[1:top + 1].tolist())
        pool = set(np.argsort(-(x @ x[i]), kind="stable")[1:POOL + 1].tolist())
        held.append(len(exact & pool) / top)
    return {"gallery": len(x), "queries": len(held), "recall": round(100 * statistics.mean(held), 2)}


def real_crops(model) -> dict:
    spec = load_spec()
    x = model.encode_images([REAL / "crops" / c["file"] for c in spec["crops"]]).float().numpy()
    cameras = [NO_CAMERA] * len(x)
    return {way: {k: round(float(v), 2) for k, v in image_to_image(spec, torch.from_numpy(x), ranked(
        x, cameras, centre, settings)).items() if k in ("R1", "mAP")} for way, (centre, settings) in WAYS.items()}


def run_row(run: Path, fresh: list[Split], fresh_seeds: list[int], model) -> dict:
    """The figures of one run (its name and training as its row of section i2i says)."""
    trained = json.loads((run / "i2i_row.json").read_text())
    same = ("variant", "minutes", "steps", "cpu", "precision")
    kept = [r for r in load_rows(ROWS) if all(r[k] == trained[k] for k in same)]
    trained = kept[-1] if kept else trained
    figures = {way: [i2i(s, centre, settings) for s in fresh] for way, (centre, settings) in WAYS.items()}
    return {key: trained[key] for key in ("variant", "minutes", "note", "steps", "precision", "cpu")} | {
        "fresh": fresh_seeds,
        **{f"{way}_{k}": [round(f[k], 2) for f in per] for way, per in figures.items() for k in ("R1", "mAP")},
        "text_R1": [round(s.text_R1, 2) for s in fresh], "real": real_crops(model),
        "pool": pool_recall(model, Path("data/synthpedes")),
        "cost_ms": round(cost_ms(fresh[0], SamePersonSettings()), 3), "cost_cpu": cpu_info().describe()}


def row_key(row: dict) -> tuple:
    return (row["variant"], row["minutes"], row["note"], row["cpu"], row["precision"])


def render(rows: list[dict], choice: dict) -> str:
    shipped = dataclasses.asdict(SamePersonSettings())
    best = choice["ranking"][0]["settings"]
    lines = [
        "`benchmarks/same_person.py`: \"find this person\" as search ranks it "
        "(`ivt.index.same_person`): each embedding minus its camera's mean embedding, then the best candidates "
        "re-ranked k-reciprocally (Zhong et al. 2017). No training: the best checkpoints of runs of section "
        "i2i, every image of a split a query against the split's other images.",
        "",
        f"**Choice** on selection draws (seeds {', '.join(map(str, choice['select']))}, val and test splits, never "
        f"reported below), with the runs {', '.join(Path(r).name for r in choice['runs'])}: "
        f"{len(GRID)} settings (k1 3/4/6, k2 1/2/3, lambda 0.3/0.6, candidates 10/20/30/50/100), "
        "image→image R1 gain over centring alone, mean over the runs. Best five:",
        "",
        "| k1 | k2 | lambda | candidates | mean gain | per run |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {r['settings']['k1']} | {r['settings']['k2']} | {r['settings']['lam']} | {r['settings']['candidates']} | "
          f"{r['gain']:+.2f} | {', '.join(f'{g:+.2f}' for g in r['per_run'].values())} |"
          for r in choice["ranking"][:5]],
        "",
        ("The shipped defaults (`SamePersonSettings`) are this best setting."
         if all(shipped[key] == value for key, value in best.items()) else
         f"**The shipped defaults {shipped} are not the best setting {best}.**"),
        "",
        "**Figures** on fresh draws (test splits, mean ± std over the draws); text→image R1 is the same with or "
        "without (text queries are not re-ranked). Real crops: the hand-labelled crops of vtest.avi (one camera).",
        "",
        "| run (section i2i) | minutes | steps | image→image R1: cosine | k-reciprocal | centred | **centred + "
        "k-reciprocal (shipped)** | image→image mAP: cosine / shipped | text→image R1 | real crops image→image "
        "R1 / mAP: cosine / shipped | ms per query |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        name = f"`{r['variant']}`" + (f" ({r['note']})" if r["note"] else "")
        real = r["real"]
        lines.append(
            f"| {name} | {r['minutes']:g} | {r['steps']:,} ({r['precision']}, {r['cpu']}) | "
            f"{mean_sd(r['cosine_R1'])} | {mean_sd(r['k-reciprocal_R1'])} | {mean_sd(r['centred_R1'])} | "
            f"**{mean_sd(r['shipped_R1'])}** | "
            f"{mean_sd(r['cosine_mAP'])} / {mean_sd(r['shipped_mAP'])} | {mean_sd(r['text_R1'])} | "
            f"{real['cosine']['R1']:.1f} / {real['cosine']['mAP']:.1f} → {real['shipped']['R1']:.1f} / "
            f"{real['shipped']['mAP']:.1f} | {r['cost_ms']:.2f} |")
    lines += ["", f"ms per query: centring a pool of {POOL} cosine candidates and re-ranking the best "
              f"{shipped['candidates']}, one thread of NumPy on {rows[-1]['cost_cpu'] if rows else 'the CPU'}.",
              "", f"The pool: an index re-scores only the best {POOL} by plain cosine. Of the exact camera-centred top "
              "50 over a whole larger gallery (every image of the demo's draw), the pool held:"]
    lines += [f"- {r['minutes']:g}-minute run: {r['pool']['recall']:.2f} % ({r['pool']['queries']} queries, "
              f"{r['pool']['gallery']:,} images)" for r in rows if "pool" in r]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="run directories of section i2i")
    ap.add_argument("--choose", action="store_true", help="choose the settings anew with these runs")
    ap.add_argument("--select", type=int, nargs="+", default=[6001, 6002, 6003, 6004])
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003, 7004, 7005])
    ap.add_argument("--ids", type=int, default=400)
    ap.add_argument("--write", action="store_true", help="regenerate the section in benchmarks/RESULTS.md")
    args = ap.parse_args()
    choice_path = SAME_PERSON_ROWS.with_name("same_person_choice.json")
    if args.runs:
        selection, rows = {}, []
        for run in args.runs:
            precision = json.loads((run / "i2i_row.json").read_text())["precision"]
            model = load(run, device="cpu", which="best", precision=precision)
            if args.choose:
                selection[str(run)] = [embed(model, ensure_draw(Path("data/select") / f"seed{s}-{args.ids}", args.ids,
                                                                s), split)
                                       for s in args.select for split in ("val", "test")]
            fresh = [embed(model, ensure_draw(Path("data/fresh") / f"seed{s}-{args.ids}", args.ids, s), "test")
                     for s in args.fresh]
            rows.append(run_row(run, fresh, args.fresh, model))
            print(json.dumps(rows[-1]), flush=True)
        if args.choose:
            choice = {"select": args.select, "runs": [str(r) for r in args.runs], "ranking": choose(selection)}
            choice_path.write_text(json.dumps(choice, indent=1) + "\n")
        keep_rows(SAME_PERSON_ROWS, rows, row_key)
    if not choice_path.exists():
        raise SystemExit("no choice measured yet: give --runs ... --choose")
    text = render(load_rows(SAME_PERSON_ROWS), json.loads(choice_path.read_text()))
    print(text)
    if args.write:
        write_section("same-person", text, "Finding a person from a photo: the shipped ranking")


if __name__ == "__main__":
    main()
