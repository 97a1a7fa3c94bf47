"""Ablation of IVT's components with the demo recipe: same data, several seeds, at equal steps or
at equal training time.

Variants (overrides on top of ``src/ivt/recipes/demo.yaml``): full IVT (multi-level alignment + BMM token
dropping), without MLA (sentence-level texts only), without BMM, and a two-tower baseline
(separate image and text transformers of the same total block size, nothing shared, MLA + BMM).

Budgets: ``--steps N`` gives every variant N optimisation steps. ``--equal-time-steps N`` gives
the first variant N steps and every other one as many steps as fit in the same time: N x (first
variant's seconds per step) / (its own), with the seconds per step measured here first
(round-robin over the variants, so that a change of machine load hits all of them alike; the
load average is printed). A step-count budget keeps the runs deterministic on a shared machine;
N is what the first variant does in the demo's budget on 2 idle cores. ``--minutes M`` runs each
variant for M minutes of wall clock instead (an idle machine only).

Every run's best checkpoint (chosen on the training draw's val split) is evaluated on the test
split of the training draw and of every ``--heldout`` draw. Prints a table (mean ± sd over seeds)
and with ``--write TAG`` regenerates that section of benchmarks/RESULTS.md.

    python benchmarks/ablation.py --data data/learning/train --steps 1600 --seeds 0 1 2 --write ablation-steps
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from learning import DEMO_CONFIG, _slug, ensure_draw, run_one, steps_per_epoch
from results_md import write_section

VARIANTS = {
    "IVT (MLA + BMM)": ["align.word=true", "align.phrase=true", "token_drop.ratio=0.2"],
    "w/o MLA": ["align.word=false", "align.phrase=false", "token_drop.ratio=0.2"],
    "w/o BMM": ["align.word=true", "align.phrase=true", "token_drop.ratio=0"],
    "two-tower": ["model.arch=two-tower", "align.word=true", "align.phrase=true", "token_drop.ratio=0.2"],
}


def step_seconds(data: Path, variants: dict[str, list[str]], threads: int, steps: int = 12,
                 rounds: int = 3) -> dict[str, float]:
    """Median seconds per training step of each variant (after 3 warm-up steps), measured in
    ``rounds`` round-robin passes of ``steps`` steps each."""
    from ivt.config import load_config
    from ivt.train.trainer import Trainer

    trainers, times = {}, {name: [] for name in variants}
    for name, overrides in variants.items():
        out = Path(f"/tmp/ivt-ablation-timing-{os.getpid()}") / _slug(name)
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_config(DEMO_CONFIG, [*overrides, f"data.path={data}", f"train.out_dir={out}",
                                        f"train.threads={threads}", "train.eval_every=0"])
        tr = Trainer(cfg)
        source = tr.batches()
        for _ in range(3):
            tr.train_step(next(source))["loss"].item()
        trainers[name] = (tr, source)
    for _ in range(rounds):
        for name, (tr, source) in trainers.items():
            for _ in range(steps):
                start = time.perf_counter()
                tr.train_step(next(source))["loss"].item()
                times[name].append(time.perf_counter() - start)
    for tr, _ in trainers.values():
        shutil.rmtree(tr.run_dir, ignore_errors=True)
    return {name: statistics.median(t) for name, t in times.items()}


def table(results: dict[str, list[dict]], budget: str, seeds: list[int], draws: list[str]) -> str:
    head = ["variant", "steps"] + [f"{d} R1" for d in draws] + [f"{d} mAP" for d in draws]
    lines = [f"Tiny model, demo recipe, {budget}; seeds {seeds}; mean ± sd over seeds.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, runs in results.items():
        cells = [name, f"{statistics.mean(r['steps'] for r in runs):.0f}"]
        for key in ("R1", "mAP"):
            for d in draws:
                vals = [r["fresh"][d][key] for r in runs]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/learning/train")
    ap.add_argument("--ids", type=int, default=3000, help="SynthPedes size when --data must be generated")
    ap.add_argument("--heldout", nargs="*", default=[], metavar="DIR:SPLIT", help="more held-out sets")
    ap.add_argument("--steps", type=int, help="equal steps: this many per run")
    ap.add_argument("--equal-time-steps", type=int, help="equal time: the first variant's steps")
    ap.add_argument("--step-seconds", type=float, nargs="*", help="seconds per step of each variant (skip timing)")
    ap.add_argument("--minutes", type=float, help="equal wall-clock minutes per run (idle machine)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/ablation")
    ap.add_argument("--write", metavar="TAG", help="regenerate this tag's section of RESULTS.md")
    args = ap.parse_args()
    if sum(x is not None for x in (args.steps, args.equal_time_steps, args.minutes)) != 1:
        ap.error("give exactly one of --steps, --equal-time-steps, --minutes")
    data = ensure_draw(Path(args.data), args.ids, 0)
    variants = {name: VARIANTS[name] for name in args.variants}
    budgets: dict[str, dict] = {}
    note = ""
    if args.equal_time_steps:
        if args.step_seconds:
            seconds = dict(zip(variants, args.step_seconds))
            note = "seconds per step given"
        else:
            load = os.getloadavg()[0]
            seconds = step_seconds(data, variants, args.threads)
            note = f"seconds per step measured here with {args.threads} threads, load average {load:.1f}"
        ref = seconds[next(iter(variants))]
        for name in variants:
            budgets[name] = {"steps": round(args.equal_time_steps * ref / seconds[name])}
        print("seconds per step: " + ", ".join(f"{n} {s:.3f}" for n, s in seconds.items()) + f" ({note})")
        budget = (f"equal training time: {args.equal_time_steps} steps of the first variant, the others "
                  f"in proportion to their step time ({', '.join(f'{n} {s * 1000:.0f} ms' for n, s in seconds.items())}"
                  f"; {note})")
    elif args.steps:
        budgets = {name: {"steps": args.steps} for name in variants}
        budget = f"{args.steps} steps each"
    else:
        budgets = {name: {"minutes": args.minutes} for name in variants}
        budget = f"{args.minutes:g} min of training each"
    evals = [f"{data}:test", *args.heldout]
    draws = [f"{Path(e.partition(':')[0]).name}:{e.partition(':')[2] or 'test'}" for e in evals]
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for name, overrides in variants.items():
        for seed in args.seeds:
            b = budgets[name]
            r = run_one(data, Path(args.work) / f"{_slug(name)}-seed{seed}", overrides, seed,
                        steps=b.get("steps"), minutes=b.get("minutes"), evals=4, fresh=evals, threads=args.threads)
            results.setdefault(name, []).append(r)
            cells = "  ".join(f"{d} R1 {m['R1']:.1f} mAP {m['mAP']:.1f}" for d, m in r["fresh"].items())
            print(f"{name:<18} seed {seed}: {r['steps']} steps ({steps_per_epoch(overrides, data)}/epoch)  {cells}",
                  flush=True)
    text = table(results, budget, args.seeds, draws)
    print(text)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    if args.write:
        write_section(args.write, text, f"Ablation (`benchmarks/ablation.py`, {args.write})")


if __name__ == "__main__":
    main()
