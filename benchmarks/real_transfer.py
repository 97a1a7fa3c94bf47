"""Transfer to real people: a trained model on hand-labelled crops of a real pedestrian video.

``benchmarks/real/`` holds 58 crops cut by OpenCV's HOG people detector from ``vtest.avi``
(Debian's ``opencv-doc``; see ``real/make_crops.py``); only the 24 from frames 0-399 are scored
(frames 400 on are held out for independent checks; the larger dev set of those frames is
``benchmarks/real_dev.py``). ``queries.json``: a handful of
descriptions written by hand, each with every crop that matches it (several people can match one
description). Every crop is the gallery for every query. Prints, per query and overall, AP and
whether the first result matches, against what a random ranking scores (exact expectations).

    python benchmarks/real_transfer.py --checkpoint runs/demo [--write real]
"""
from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch

from ivt.evaluate.metrics import chance_ap, ranking_metrics

REAL = Path(__file__).with_name("real")
HELD_OUT_FROM = 400   # vtest.avi frames 400-795 are held out for independent checks: never scored here


def load_spec() -> dict:
    """``queries.json`` without the crops of the held-out frames (and queries left with no match)."""
    spec = json.loads((REAL / "queries.json").read_text())
    spec["crops"] = [c for c in spec["crops"] if c["frame"] < HELD_OUT_FROM]
    kept = {c["id"] for c in spec["crops"]}
    queries = [dict(q, matches=[m for m in q["matches"] if m in kept]) for q in spec["queries"]]
    spec["queries"] = [q for q in queries if q["matches"]]
    return spec


def evaluate(run_dir: Path, which: str = "best", precision: str = "auto") -> dict:
    """Per-query AP / top-1 of the model in ``run_dir`` on the real set, with chance figures."""
    from ivt.inference import load

    spec = load_spec()
    model = load(run_dir, device="cpu", which=which, precision=precision)
    ids = [c["id"] for c in spec["crops"]]
    images = model.encode_images([REAL / "crops" / c["file"] for c in spec["crops"]])
    texts = model.encode_texts([q["text"] for q in spec["queries"]])
    sim = texts @ images.t()
    rows = []
    for q, s in zip(spec["queries"], sim):
        relevant = torch.tensor([i in set(q["matches"]) for i in ids])
        # One query whose relevant crops share an id (1) that no other crop has: the library's
        # exact metrics (ties ranked against the relevant crops).
        m = ranking_metrics(s[None], [1], relevant.long(), ks=(1,))
        rows.append({"text": q["text"], "relevant": int(relevant.sum()), "AP": m["mAP"],
                     "top1": m["R1"] == 100.0,
                     "chance_AP": 100 * chance_ap(int(relevant.sum()), len(ids)),
                     "chance_top1": 100 * float(relevant.float().mean())})
    same = image_to_image(spec, images)
    return {"gallery": len(ids), "queries": rows,
            "mAP": statistics.mean(r["AP"] for r in rows), "chance_mAP": statistics.mean(r["chance_AP"] for r in rows),
            "R1": 100 * statistics.mean(r["top1"] for r in rows),
            "chance_R1": statistics.mean(r["chance_top1"] for r in rows),
            "i2i_R1": same["R1"], "i2i_mAP": same["mAP"],
            "i2i_queries": same["num_queries"] - same["num_skipped_queries"]}


def image_to_image(spec: dict, images: torch.Tensor, scores: torch.Tensor | None = None) -> dict:
    """Find this person on the real crops: each crop of a look worn by one person a query against
    all other crops, the crops of the same look relevant. The two looks worn by two different men
    (marked so in ``looks``) are distractors, never queries or matches. ``scores`` (N, N): another
    ranking's than the cosine of ``images``."""
    shared = {k for k, text in spec["looks"].items() if "two different" in text}
    codes = {k: i for i, k in enumerate(sorted(spec["looks"]))}
    pids = [codes[c["look"]] if c["look"] not in shared else -1 - n for n, c in enumerate(spec["crops"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the distractors are no queries
        return ranking_metrics(images @ images.t() if scores is None else scores, pids, pids, exclude_self=True)


def report(result: dict, label: str) -> str:
    lines = [f"{label}: {len(result['queries'])} queries x {result['gallery']} real crops; "
             f"mAP {result['mAP']:.1f} (chance {result['chance_mAP']:.1f}), "
             f"R1 {result['R1']:.1f} (chance {result['chance_R1']:.1f}). Image to image ({result['i2i_queries']} "
             f"crops of one-person looks, each against the other crops): R1 {result['i2i_R1']:.1f}, "
             f"mAP {result['i2i_mAP']:.1f}.", "",
             "| query | matching crops | AP | chance AP | top-1 matches |", "| --- | --- | --- | --- | --- |"]
    for r in result["queries"]:
        lines.append(f"| {r['text']} | {r['relevant']} | {r['AP']:.1f} | {r['chance_AP']:.1f} | "
                     f"{'yes' if r['top1'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", nargs="+", default=["runs/demo"], help="run directories")
    ap.add_argument("--write", metavar="TAG", help="regenerate this tag's section of RESULTS.md")
    args = ap.parse_args()
    blocks = []
    for run in args.checkpoint:
        text = report(evaluate(Path(run)), run)
        print(text + "\n")
        blocks.append(text)
    if args.write:
        from results_md import write_section

        write_section(args.write, "\n\n".join(blocks), "Transfer to real people (`benchmarks/real_transfer.py`)")


if __name__ == "__main__":
    main()
