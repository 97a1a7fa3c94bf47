"""Ablation on SynthPedes: same data, same training time budget, several seeds.

Variants: full IVT (MLA + BMM); without MLA (sentence level only); without BMM (no token
dropping); a two-tower baseline (separate image and text transformers of the same total block
size, nothing shared). Prints a table of test R1/mAP/mINP (mean +- std over seeds) and writes it
into benchmarks/RESULTS.md between the ablation markers.

    python benchmarks/ablation.py [--minutes 4] [--seeds 0 1] [--data data/synthpedes]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import time
from pathlib import Path

from ivt.config import load_config
from ivt.demo import DEMO_CONFIG
from ivt.evaluate.retrieval import evaluate_checkpoint
from ivt.train.trainer import train
from results_md import write_section

VARIANTS = {
    "IVT (MLA + BMM)": [],
    "w/o MLA": ["align.word=false", "align.phrase=false"],
    "w/o BMM": ["mask.ratio=0"],
    "two-tower": ["model.arch=two-tower"],
}
RESULTS = Path(__file__).with_name("RESULTS.md")


def run_one(data: Path, out: Path, variant: list[str], seed: int, minutes: float, epochs: int | None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    budget = [f"train.epochs={epochs}", "train.max_minutes=null"] if epochs else [f"train.max_minutes={minutes}"]
    cfg = load_config(DEMO_CONFIG, [*variant, f"data.path={data}", f"train.out_dir={out}",
                             f"train.seed={seed}", *budget, "train.eval_every=1000"])
    train(cfg)
    result = evaluate_checkpoint(out, data, split="test", device="cpu")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    result["steps"] = max((r["step"] for r in steps), default=0)
    return result


def table(results: dict[str, list[dict]], budget: str, seeds: list[int]) -> str:
    lines = [f"Test split, tiny model, {budget} per run, seeds {seeds}.",
             "", "| variant | R1 | mAP | mINP | steps |", "| --- | --- | --- | --- | --- |"]
    for name, runs in results.items():
        cells = []
        for key in ("R1", "mAP", "mINP", "steps"):
            vals = [float(r[key]) for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            mean = statistics.mean(vals)
            cells.append(f"{mean:.2f} ± {sd:.2f}" if key != "steps" else f"{mean:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(text: str, tag: str = "ablation") -> None:
    write_section(tag, text, f"Ablation (`benchmarks/ablation.py`, {tag})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/synthpedes")
    ap.add_argument("--ids", type=int, default=600, help="SynthPedes size when --data must be generated")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time budget per run")
    ap.add_argument("--epochs", type=int, help="instead of a time budget: this many epochs per run (step-matched)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--work", default="runs/ablation")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "reid_raw.json").exists():
        from ivt.synth.generate import generate_synthpedes

        generate_synthpedes(data, args.ids, 0)
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for name in args.variants:
        for seed in args.seeds:
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            r = run_one(data, Path(args.work) / f"{slug}-seed{seed}", VARIANTS[name], seed, args.minutes,
                        args.epochs)
            results.setdefault(name, []).append(r)
            print(f"{name:<18} seed {seed}: R1 {r['R1']:.2f} mAP {r['mAP']:.2f} mINP {r['mINP']:.2f} "
                  f"({r['steps']} steps)", flush=True)
    budget = f"{args.epochs} epochs (step-matched)" if args.epochs else f"{args.minutes:g} min of training"
    text = table(results, budget, args.seeds)
    print(text)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    if not args.no_write:
        write_results(text, "ablation-steps" if args.epochs else "ablation")


if __name__ == "__main__":
    main()
