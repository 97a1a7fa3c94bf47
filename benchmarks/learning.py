"""How fast the demo model learns: train recipe variants for fixed budgets, print learning curves
and retrieval on fresh SynthPedes draws.

A variant is a list of config overrides applied on top of ``src/ivt/recipes/demo.yaml``. A budget is
either a number of optimisation steps (``--steps``: step-matched and deterministic, what to
compare on a shared machine) or of minutes (``--minutes``: wall clock, on an idle machine, one
run at a time). Every run keeps its validation curve (``metrics.jsonl``: val R1/mAP at each
evaluation, with the step and training seconds); the best checkpoint is chosen on validation
and then evaluated on the test split of each ``--fresh`` draw (SynthPedes of other seeds,
never used to choose anything).

    python benchmarks/learning.py --variants demo --steps 600 1300 --seeds 0 1
    python benchmarks/learning.py --variants demo --minutes 2 4 8 --fresh 7001 --write

``--parallel N`` runs N trainings at once in subprocesses (for a machine with many cores or a
GPU; never on the shared 2-core machine). ``--write`` regenerates the ``learning`` section of
benchmarks/RESULTS.md from the runs of this invocation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ivt.config import DEMO_CONFIG

#: Named levers: config overrides on top of the demo recipe (``demo``: the recipe as it is).
VARIANTS: dict[str, list[str]] = {
    "demo": [],
    "paper-cmpm": ["loss.name=cmpm", "optim.lr=0.0003", "align.word=true", "align.phrase=true",
                   "align.word_positives=identity", "train.sampler=identity", "model.stem=patch"],
    "w/o MLA": ["align.word=false", "align.phrase=false"],
    "w/o BMM": ["token_drop.ratio=0"],
    "two-tower": ["model.arch=two-tower"],
}


def ensure_draw(path: Path, ids: int, seed: int, workers: int = 1) -> Path:
    """A SynthPedes draw at ``path`` (generated when missing or of other parameters)."""
    from ivt.synth.generate import MARKER, generate_synthpedes

    marker = path / MARKER
    if marker.exists():
        params = json.loads(marker.read_text()).get("params", {})
        if params.get("num_ids") == ids and params.get("seed") == seed:
            return path
    generate_synthpedes(path, ids, seed, workers=workers, force=True)  # the benchmark's own draw
    return path


def steps_per_epoch(overrides: list[str], data: Path) -> int:
    """Optimisation steps in one epoch of the configured sampler on ``data``."""
    from ivt.config import load_config
    from ivt.data import load_dataset
    from ivt.train.batches import EpochSampler, build_samples

    cfg = load_config(DEMO_CONFIG, [*overrides, f"data.path={data}"])
    dataset = load_dataset(data)
    _, samples = build_samples(dataset, dataset.split("train"))
    t = cfg.train
    return len(EpochSampler([s.pid for s in samples], t.batch_size, t.seed, t.sampler, t.k_per_id,
                            attributes=[s.attributes for s in samples], group=t.similar_group))


def run_one(data: Path, out: Path, overrides: list[str], seed: int, *, steps: int | None = None,
            minutes: float | None = None, evals: int = 10, fresh: list[str] = (), device: str = "auto",
            threads: int = 2, real: bool = False) -> dict:
    """Train one variant for ``steps`` (or ``minutes``), then evaluate its best checkpoint (chosen
    on val) on each of ``fresh`` (draw directories, ``DIR`` for its test split or ``DIR:SPLIT``).
    With ``real``, also the mAP on the hand-labelled real crops (benchmarks/real_transfer.py).
    Returns the summary (also written to ``out/learning.json``)."""
    from ivt.config import load_config
    from ivt.evaluate.retrieval import evaluate_checkpoint
    from ivt.train.trainer import train

    if out.exists():
        shutil.rmtree(out)
    per_epoch = steps_per_epoch(overrides, data)
    if steps is not None:
        epochs = max(1, math.ceil(steps / per_epoch))
        budget = [f"train.epochs={epochs}", "train.max_minutes=null"]
    else:
        epochs = load_config(DEMO_CONFIG, overrides).train.epochs
        budget = [f"train.max_minutes={minutes}"]
    every = max(1, epochs // evals)
    cfg = load_config(DEMO_CONFIG, [*overrides, f"data.path={data}", f"train.out_dir={out}", f"train.seed={seed}",
                                    f"train.device={device}", f"train.threads={threads}", *budget,
                                    f"train.eval_every={every}", "train.log_every=10"])
    started = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [{"step": r["step"], "epoch": r["epoch"], "R1": r["R1"], "mAP": r["mAP"]}
             for r in log if r["kind"] == "eval"]
    train_log = [r for r in log if r["kind"] == "train"]
    best = json.loads((out / "best.json").read_text())
    summary = {
        "overrides": overrides, "seed": seed, "steps": max((r["step"] for r in log), default=0),
        "budget": {"steps": steps} if steps is not None else {"minutes": minutes}, "wall_s": round(wall, 1),
        "pairs_per_s": round(statistics.median(r["pairs_per_s"] for r in train_log), 1) if train_log else None,
        "final_loss": train_log[-1]["loss"] if train_log else None,
        "val": {"R1": best["metrics"]["R1"], "mAP": best["metrics"]["mAP"], "epoch": best["epoch"]},
        "curve": curve, "fresh": {},
    }
    for spec in fresh:
        draw, _, split = str(spec).partition(":")
        m = evaluate_checkpoint(out, Path(draw), split=split or "test", device="cpu" if device == "cpu" else "auto")
        summary["fresh"][f"{Path(draw).name}:{split or 'test'}"] = {k: round(float(m[k]), 2)
                                                                 for k in ("R1", "R5", "mAP", "mINP")}
    if real:
        from real_transfer import evaluate as evaluate_real

        r = evaluate_real(out)
        summary["real"] = {"mAP": round(r["mAP"], 2), "chance_mAP": round(r["chance_mAP"], 2), "R1": round(r["R1"], 2)}
    (out / "learning.json").write_text(json.dumps(summary, indent=1))
    return summary


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def job_in_subprocess(script: str, job: dict, result: str) -> dict:
    """``python script --job JOB`` in a fresh interpreter (parallel runs must not share torch's
    thread pool), its output in ``<out>.log``; returns the JSON it wrote to ``<out>/<result>``, or
    the job with the log's tail under ``error`` when it failed."""
    log = Path(job["out"] + ".log")
    Path(job["out"]).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, script, "--job", json.dumps(job)], stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        return {"error": log.read_text()[-3000:], **job}
    return json.loads((Path(job["out"]) / result).read_text())


def _subprocess_run(job: dict) -> dict:
    """``run_one`` in a fresh interpreter."""
    return job_in_subprocess(__file__, job, "learning.json")


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def _held_out_r1(run: dict, draws: list[str]) -> float:
    """Mean R1 over the run's own val split and the held-out sets: what a lever is judged by."""
    return statistics.mean([run["val"]["R1"]] + [run["fresh"][d]["R1"] for d in draws])


def table(results: list[dict], draws: list[str], reference: str | None = None) -> str:
    """Markdown table: one row per (variant, budget), mean ± sd over seeds; with ``reference``
    (a variant name) a column of the change in mean R1 (val and held-out sets) against it."""
    head = ["variant", "budget", "steps", "val R1", "val mAP"] + [f"{d} R1 / mAP" for d in draws]
    if reference:
        head.append(f"Δ R1 vs {reference}")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        b = r["budget"]
        key = (r["variant"], f"{b['steps']} steps" if "steps" in b else f"{b['minutes']:g} min")
        groups.setdefault(key, []).append(r)
    base = None
    if reference:
        base = statistics.mean(_held_out_r1(r, draws) for r in results if r["variant"] == reference)
    for (name, budget), runs in groups.items():
        cells = [name, budget, f"{statistics.mean(r['steps'] for r in runs):.0f}",
                 mean_sd([r["val"]["R1"] for r in runs]), mean_sd([r["val"]["mAP"] for r in runs])]
        for d in draws:
            r1, ap_ = (mean_sd([r["fresh"][d][k] for r in runs]) for k in ("R1", "mAP"))
            cells.append(f"{r1} / {ap_}")
        if base is not None:
            cells.append(f"{statistics.mean(_held_out_r1(r, draws) for r in runs) - base:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(results: list[dict]) -> str:
    """Validation R1 along training, one line per run."""
    lines = []
    for r in results:
        b = r["budget"]
        budget = f"{b['steps']} steps" if "steps" in b else f"{b['minutes']:g} min"
        points = " ".join(f"{p['step']}:{p['R1']:.0f}" for p in r["curve"])
        lines.append(f"- {r['variant']}, {budget}, seed {r['seed']}: {points}")
    return "\n".join(lines)


def _run_job(job: dict) -> None:
    run_one(Path(job["data"]), Path(job["out"]), job["overrides"], job["seed"], steps=job["steps"],
            minutes=job["minutes"], evals=job["evals"], fresh=job["fresh"], device=job["device"],
            threads=job["threads"], real=job.get("real", False))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--job":  # one run, in a subprocess of --parallel
        _run_job(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/learning/train", help="training draw (generated when missing)")
    ap.add_argument("--ids", type=int, default=600, help="identities of the training draw")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--fresh", type=int, nargs="*", default=[], help="seeds of fresh 400-id draws to test on")
    ap.add_argument("--heldout", nargs="*", default=[], metavar="DIR:SPLIT",
                    help="more held-out sets to evaluate on (e.g. another draw's val split)")
    ap.add_argument("--variants", nargs="+", default=["demo"], help=f"names ({', '.join(VARIANTS)})")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every variant")
    ap.add_argument("--steps", type=int, nargs="*", default=[])
    ap.add_argument("--minutes", type=float, nargs="*", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--evals", type=int, default=10, help="validations along each run (the learning curve)")
    ap.add_argument("--real", action="store_true", help="also evaluate on the real crops (benchmarks/real)")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--work", default="runs/learning")
    ap.add_argument("--write", metavar="TAG", help="regenerate this tag's section of RESULTS.md")
    ap.add_argument("--from", dest="saved", nargs="+", metavar="JSON",
                    help="no training: tables from saved runs (the results.json of earlier invocations)")
    ap.add_argument("--title", default="", help="a line above the table (with --write)")
    ap.add_argument("--reference", help="with --from: the variant the others are compared with")
    ap.add_argument("--no-curves", action="store_true", help="the table only")
    args = ap.parse_args()
    if args.saved:
        results = [r for path in args.saved for r in json.loads(Path(path).read_text()) if "error" not in r]
        draws = list(dict.fromkeys(d for r in results for d in r["fresh"]))
        draws = [d for d in draws if all(d in r["fresh"] for r in results)]
        report(results, draws, args.write, args.title, args.reference, not args.no_curves)
        return
    if not args.steps and not args.minutes:
        ap.error("give --steps and/or --minutes")
    data = ensure_draw(Path(args.data), args.ids, args.data_seed)
    fresh = [ensure_draw(Path(args.data).parent / f"fresh{s}", 400, s) for s in args.fresh]
    evals = [f"{f}:test" for f in fresh] + list(args.heldout)
    jobs = []
    for name in args.variants:
        overrides = [*VARIANTS[name], *args.set] if name in VARIANTS else [*name.split(), *args.set]
        for budget in [("steps", s) for s in args.steps] + [("minutes", m) for m in args.minutes]:
            for seed in args.seeds:
                out = Path(args.work) / f"{_slug(name)}-{budget[0]}{budget[1]:g}-seed{seed}"
                jobs.append({"variant": name, "data": str(data), "out": str(out), "overrides": overrides,
                             "seed": seed, "steps": budget[1] if budget[0] == "steps" else None,
                             "minutes": budget[1] if budget[0] == "minutes" else None, "evals": args.evals,
                             "fresh": evals, "device": args.device, "threads": args.threads, "real": args.real})
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        results = []
        for job, r in zip(jobs, pool.map(_subprocess_run, jobs)):
            r["variant"] = job["variant"]
            if "error" in r:
                print(f"{job['variant']} seed {job['seed']}: FAILED\n{r['error']}", flush=True)
                continue
            results.append(r)
            fr = "  ".join(f"{d} R1 {m['R1']:.1f} mAP {m['mAP']:.1f}" for d, m in r["fresh"].items())
            if "real" in r:
                fr += f"  real mAP {r['real']['mAP']:.1f} (chance {r['real']['chance_mAP']:.1f})"
            print(f"{job['variant']:<40} seed {job['seed']} {r['steps']:>5} steps {r['wall_s']:>6.0f} s  "
                  f"val R1 {r['val']['R1']:.1f} mAP {r['val']['mAP']:.1f}  {fr}", flush=True)
    draws = [f"{Path(e.partition(':')[0]).name}:{e.partition(':')[2] or 'test'}" for e in evals]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (Path(args.work) / "results.json").write_text(json.dumps(results, indent=1))
    report(results, draws, args.write, args.title, args.reference, not args.no_curves)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")


def report(results: list[dict], draws: list[str], tag: str | None, title: str = "", reference: str | None = None,
           with_curves: bool = True) -> None:
    """Print the table (and the curves); with ``tag``, write them into RESULTS.md."""
    text = table(results, draws, reference)
    if with_curves:
        text += "\n\nValidation R1 along training (step:R1):\n\n" + curves(results)
    if title:
        text = f"{title}\n\n{text}"
    print(text)
    if tag:
        from results_md import write_section

        write_section(tag, text, f"Learning speed (`benchmarks/learning.py`, {tag})")


if __name__ == "__main__":
    main()
