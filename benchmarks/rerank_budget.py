"""Where re-ranking pays: the demo recipe with and without the image-text matching head, trained
for budgets of minutes, each evaluated with and without re-ranking (a curve over the budget).

    python benchmarks/rerank_budget.py --device cuda --precision bf16 --minutes 1 2 4 \\
        --variants "" "model.itm=true" --parallel 6 --threads 2 [--rows OUT.json]
    python benchmarks/rerank_budget.py --evaluate runs/rerank-budget/RUN ...   # kept runs, scored again
    python benchmarks/rerank_budget.py --write           # render the kept rows into RESULTS.md

A variant is a space-separated list of config overrides on the demo recipe ("" is the recipe,
the dual encoder; ``model.itm=true`` adds the matching head and its loss); a leading ``minutes=M``
gives it that one budget instead of every ``--minutes``. Every (variant, budget)
trains from scratch on the demo's SynthPedes draw (3,000 ids, seed 0) for that many minutes of
wall clock, the best checkpoint chosen on validation as the demo does. The runs of one invocation
train at the same time (``--parallel``, for a GPU machine; on the 2-core CPU use 1): a budget's
dual and matching runs share the machine alike, so a row pair is an equal-time comparison, and the
steps each reached are recorded. Each run is then evaluated on the test split of fresh draws (other
seeds, never used to choose): text-to-image R1 / mAP in cosine order (K = 0) and with the top K
re-ordered (K = 8, 16, 32, 64) as every ranking path does (the matching head's log-odds fused with
the cosine, weighted as the run chose on its validation split) and by the log-odds alone,
image-to-image R1, and the real crops' text-to-image mAP (benchmarks/real). ``--evaluate`` scores
kept runs again after a change to the ranking (a run trained before training chose the weight
gets it chosen the same way on its validation split). A run's re-ranking cost (ms per query, on the device) is
timed right after it (other runs may still share the device: the table says how many ran at once);
``--cost`` times a base-size encoder's after all runs, on the idle device (alone: a row of its own).

Rows are kept in ``benchmarks/rerank_budget_rows.json`` (runs/ is scratch; rows from another
machine are merged into ``--rows`` with ``--merge FILE``); ``--write`` renders them all.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from results_md import keep_rows, load_rows, write_section

ROWS = Path(__file__).with_name("rerank_budget_rows.json")
KS = (8, 16, 32, 64)


def machine(device: str) -> str:
    """The device a row was measured on, in words (GPU name, or the CPU and its flags)."""
    import torch

    from ivt.runtime import cpu_info, resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    return cpu_info().describe()


def run_job(job: dict) -> dict:
    """Train one (variant, budget) and evaluate it; returns its row."""
    from learning import run_one

    out = Path(job["out"])
    overrides = [*job["variant"].split(), f"train.precision={job['precision']}"]
    seed = int(next((o.split("=", 1)[1] for o in overrides if o.startswith("train.seed=")), 0))
    summary = run_one(Path(job["data"]), out, overrides, seed, minutes=job["minutes"], device=job["device"],
                      threads=job["threads"])   # run_one's seed comes last: a variant's train.seed must reach it
    state = json.loads((out / "last.state.json").read_text())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    itm = [r["itm_loss"] for r in log if r["kind"] == "train" and "itm_loss" in r]
    row = {"variant": job["variant"], "minutes": job["minutes"], "steps": summary["steps"],
           "train_s": round(state["train_seconds"], 1), "batch": _batch(out),
           "precision": json.loads((out / "last.json").read_text()).get("precision"),
           "machine": job["machine"], "parallel": job["parallel"], "val_R1": summary["val"]["R1"],
           "itm_loss_end": round(statistics.mean(itm[-5:]), 4) if itm else None}
    return {**row, **evaluate_run(out, job)}


def evaluate_run(out: Path, job: dict) -> dict:
    """A trained run's evaluation fields of a row: fresh draws and real crops in cosine order and
    with the top K re-ranked (fused with the weight its training chose on validation, as every
    ranking path; also by the ITM log-odds alone), and the cost of re-ranking. A run trained before
    training chose the weight gets it chosen now, the same way, on its validation split."""
    from ivt.data import load_dataset
    from ivt.evaluate.rerank import choose_weight_on
    from ivt.evaluate.retrieval import embed_split, split_images
    from ivt.inference import load
    from rerank import data_of, real_metrics, set_metrics

    model = load(out, device=job["device"], precision=job["precision"])
    ks = KS if model.can_rerank else ()
    weight, source = model.meta.get("rerank_weight"), "training"
    if ks and weight is None:
        dataset = load_dataset(data_of(out))
        records = dataset.split("val")
        images = split_images(model, dataset, records)
        emb = embed_split(model, dataset, records, images=images)
        weight = choose_weight_on(model, emb.captions, emb.text_pids, emb.text, images, emb.image_pids, emb.image)[0]
        source = "chosen on validation after training"
    fresh, cost = [], {}
    for draw in job["fresh"]:
        by_k, draw_cost, same = set_metrics(model, Path(draw), ks, weight=weight)
        alone = set_metrics(model, Path(draw), ks, by="itm")[0] if ks else {}
        fresh.append({"draw": Path(draw).name, "i2i_R1": round(same["R1"], 2), "i2i_mAP": round(same["mAP"], 2),
                      **{str(k): {m: round(by_k[k][m], 2) for m in ("R1", "R5", "mAP")} for k in by_k},
                      **({"itm": {str(k): {m: round(alone[k][m], 2) for m in ("R1", "R5", "mAP")} for k in ks}}
                         if ks else {})})
        cost = cost or draw_cost
    real = real_metrics(model, ks, weight=weight)
    return {"rerank_by": "fused" if ks else None,
            **({"rerank_weight": weight, "rerank_weight_from": source} if ks else {}), "fresh": fresh,
            "real_mAP": {str(k): round(v, 2) for k, v in real.items()},
            **({"real_mAP_itm": {str(k): round(v, 2) for k, v in real_metrics(model, ks, by="itm").items()}}
               if ks else {}),
            "ms_per_query": {str(k): round(v, 3) for k, v in cost.items() if k != "bytes_per_image"},
            "state_bytes_per_image": cost.get("bytes_per_image")}


def reevaluate(runs: list[Path], rows_file: Path, fresh: list[str], device: str, precision: str) -> None:
    """Evaluate trained runs again (after a change to how re-ranking orders the top K): each run's
    kept row (same machine, minutes, batch and steps as the run's own budget_row.json) gets new
    evaluation fields; its training figures and variant label stay."""
    rows = load_rows(rows_file)
    for run in runs:
        own = json.loads((run / "budget_row.json").read_text())
        kept = [r for r in rows if all(r.get(f) == own.get(f) for f in ("machine", "minutes", "batch", "steps"))]
        if len(kept) != 1:
            raise SystemExit(f"{run}: {len(kept)} kept rows match its budget_row.json (need exactly one)")
        if own["machine"] != machine(device):
            raise SystemExit(f"{run}: trained on {own['machine']}, this is {machine(device)}; evaluate it there")
        row = {**kept[0], **evaluate_run(run, {"device": device, "precision": precision, "fresh": fresh})}
        keep_rows(rows_file, [row], row_key)
        print(json.dumps(row), flush=True)


def _batch(run: Path) -> int:
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"])


def _mean(row: dict, key: str, k: str = "0") -> float:
    values = [d[key] if key.startswith("i2i") else d[k][key] for d in row["fresh"]]
    return statistics.mean(values)


def _alone(row: dict) -> float:
    """Mean fresh-draw R1 with the top 8 ordered by the ITM log-odds alone (what K = 8 meant in
    rows measured before the fusion)."""
    return statistics.mean(d["itm"]["8"]["R1"] if "itm" in d else d["8"]["R1"] for d in row["fresh"])


def _dual_of(row: dict, rows: list[dict]) -> dict | None:
    """The dual-encoder row trained alongside ``row`` (same machine, runs at once, batch, minutes):
    its overrides without the matching head's and its loss's."""
    plain = " ".join(o for o in row["variant"].split() if not o.startswith(("model.itm", "loss.itm")))
    same = [r for r in rows if r["variant"] == plain and r is not row and
            all(r.get(f) == row.get(f) for f in ("machine", "parallel", "batch", "minutes"))]
    return same[0] if same else None


def render(rows: list[dict]) -> str:
    """The table of every kept row: per (machine, variant, budget), fresh-draw R1 without and with
    re-ranking, the best K's gain, image-to-image R1, real crops mAP."""
    if not rows:
        return "No rows kept yet."
    draws = sorted({d["draw"] for r in rows for d in r["fresh"]})
    lines = [f"`benchmarks/rerank_budget.py`: the demo recipe (\"dual\") and the recipe with the matching head "
             f"(`model.itm=true`), each trained from scratch on the demo draw for the minutes given, the runs of "
             f"one machine at the same time, or on a 2-core CPU one after another, each alone (so each budget's pair "
             f"is an equal-time comparison); fresh draws "
             f"{', '.join(draws)} (test splits, mean over the draws). K: the cosine's top K re-ordered, "
             f"\"fused\" by the matching head's log-odds and the cosine, each standardised over the K, the log-odds "
             f"times a weight the run chose on its validation split (`ivt.evaluate.rerank.fuse`, "
             f"`choose_weight`; what every ranking path does), summed, or by the log-odds alone (rows measured "
             f"before the fusion); \"best K\" is the best of K = {', '.join(map(str, KS))} (chosen here on these "
             f"draws: an upper bound on what one fixed K gives).", "",
             "| machine | variant | batch | minutes | steps | ITM loss at the end | top K ordered by | R1 K=0 | "
             "R1 K=8 | R1 K=16 | R1 K=32 | R1 K=64 | R1 K=8, ITM alone | mAP K=0 / best K | best K gain R1 | "
             "best K vs the dual run, equal time | image→image R1 | real crops mAP K=0 / K=8 (ITM alone) |",
             "|" + " --- |" * 18]
    runs = [r for r in rows if r["fresh"]]
    for r in sorted(runs, key=lambda r: (r["machine"], -r.get("parallel", 1), r["batch"], r["minutes"], r["variant"])):
        name = r["variant"] or "dual (the recipe)"
        r1 = {k: _mean(r, "R1", k) for k in ["0", *map(str, KS)] if k in r["fresh"][0]}
        best = max((k for k in r1 if k != "0"), key=lambda k: r1[k], default=None)
        cells = [r["machine"] + (f", {r['parallel']} runs at once" if r.get("parallel", 1) > 1 else ""), name,
                 str(r["batch"]), f"{r['minutes']:g}", f"{r['steps']:,}",
                 f"{r['itm_loss_end']:.3f}" if r["itm_loss_end"] is not None else "—",
                 "—" if best is None else "ITM alone" if "rerank_weight" not in r else
                 f"fused, weight {r['rerank_weight']:g}" + ("" if r["rerank_weight_from"] == "training"
                                                            else " (chosen after training)"),
                 *(f"{r1[k]:.2f}" if k in r1 else "—" for k in ["0", *map(str, KS)]),
                 "—" if best is None else f"{_alone(r):.2f}",
                 f"{_mean(r, 'mAP'):.2f} / " + (f"{_mean(r, 'mAP', best):.2f}" if best else "—"),
                 f"{r1[best] - r1['0']:+.2f} (K={best})" if best else "—",
                 f"{r1[best] - _mean(dual, 'R1'):+.2f}" if best and (dual := _dual_of(r, runs)) else "—",
                 f"{_mean(r, 'i2i_R1'):.2f}",
                 f"{r['real_mAP']['0']:.1f} / " + (f"{r['real_mAP']['8']:.1f}" if "8" in r["real_mAP"] else "—")
                 + (f" ({r['real_mAP_itm']['8']:.1f})" if "real_mAP_itm" in r else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("The chance level of the matching loss (one positive for two hard negatives, a constant "
                 "prediction) is 0.637.")
    timed = {}
    for r in rows:                        # one timing per machine: the first row that has one
        if r.get("ms_per_query"):
            timed.setdefault(r["machine"], r)
    for r in timed.values():
        shared = f", while {r['parallel']} runs shared the device" if r.get("parallel", 1) > 1 else ""
        lines.append(f"- {r['machine']}{shared}, {r['variant']}, {r['minutes']:g} min: re-ranking costs "
                     + ", ".join(f"{v:.2f} ms (K = {k})" for k, v in r["ms_per_query"].items())
                     + f" per query; cached states {r['state_bytes_per_image'] / 1024:.1f} KiB per image"
                     + (f" ({r['cost_note']})." if r.get("cost_note") else "."))
    for line in sorted({c for r in rows for c in r.get("costs", [])}):
        lines.append(f"- {line}")
    return "\n".join(lines)


def row_key(row: dict) -> tuple:
    """A row of the same machine, variant, budget and batch replaces a kept one."""
    return row["machine"], row["variant"], row["minutes"], row["batch"]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--job":
        job = json.loads(sys.argv[2])
        Path(job["out"], "budget_row.json").write_text(json.dumps(run_job(job)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/synthpedes"), help="the demo's draw (3,000 ids, seed 0)")
    ap.add_argument("--minutes", type=float, nargs="*", default=[])
    ap.add_argument("--variants", nargs="*", default=["", "model.itm=true"])
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003, 7004, 7005])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (a GPU machine; 1 on a 2-core CPU)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of each run")
    ap.add_argument("--workers", type=int, default=2, help="processes rendering a missing draw")
    ap.add_argument("--work", type=Path, default=Path("runs/rerank-budget"))
    ap.add_argument("--rows", type=Path, default=ROWS, help="where the rows measured now are kept")
    ap.add_argument("--cost", action="store_true", help="also measure the base-size re-ranking cost on --device")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="rows measured elsewhere, to keep")
    ap.add_argument("--evaluate", type=Path, nargs="*", default=[],
                    help="trained runs (under --work) to evaluate again; their kept rows get the new figures")
    ap.add_argument("--write", action="store_true", help="regenerate the section in benchmarks/RESULTS.md")
    args = ap.parse_args()
    for other in args.merge:
        keep_rows(args.rows, load_rows(other), row_key)
    if args.minutes or any(v.startswith("minutes=") for v in args.variants):
        from learning import ensure_draw, job_in_subprocess

        with ThreadPoolExecutor(1 + len(args.fresh)) as pool:   # the draws render at once
            data = pool.submit(ensure_draw, args.data, 3000, 0, args.workers)
            fresh = [pool.submit(ensure_draw, Path("data/fresh") / f"seed{s}-400", 400, s, 1) for s in args.fresh]
            data, fresh = data.result(), [f.result() for f in fresh]
        where = machine(args.device)
        plan = [(v, m) for m in sorted(args.minutes, reverse=True) for v in args.variants
                if not v.startswith("minutes=")]
        plan += [(v.split(None, 1)[1] if " " in v else "", float(v.split()[0].split("=", 1)[1]))
                 for v in args.variants if v.startswith("minutes=")]
        jobs = [{"variant": v, "minutes": m, "data": str(data), "fresh": [str(f) for f in fresh],
                 "device": args.device, "precision": args.precision, "threads": args.threads, "machine": where,
                 "parallel": min(args.parallel, len(plan)),
                 "out": str(args.work / f"{'-'.join(v.split()) or 'dual'}-{m:g}min")}
                for v, m in sorted(plan, key=lambda p: -p[1])]
        started = time.perf_counter()
        with ThreadPoolExecutor(max(1, args.parallel)) as pool:
            for job, row in zip(jobs, pool.map(lambda j: job_in_subprocess(__file__, j, "budget_row.json"), jobs)):
                if "error" in row:
                    print(f"{job['out']}: FAILED\n{row['error']}", flush=True)
                    continue
                keep_rows(args.rows, [row], row_key)   # as they come: a call cut short keeps the rows before it
                print(json.dumps(row), flush=True)
        print(f"all runs: {time.perf_counter() - started:.0f} s", flush=True)
    if args.evaluate:
        from learning import ensure_draw

        fresh = [str(ensure_draw(Path("data/fresh") / f"seed{s}-400", 400, s, 1)) for s in args.fresh]
        reevaluate(args.evaluate, args.rows, fresh, args.device, args.precision)
    if args.cost:        # after the runs, on the idle device (alone: a row of its own)
        from rerank import base_cost

        costs = list(dict.fromkeys(base_cost(KS, device=args.device, precision=p)
                                   for p in ("fp32", args.precision) if p != "auto"))
        print("\n".join(costs), flush=True)
        row = {"variant": "(re-ranking cost)", "minutes": 0, "batch": 0, "machine": machine(args.device),
               "fresh": [], "costs": costs}
        keep_rows(args.rows, [row], row_key)
    if args.rows != ROWS:
        print(f"rows kept in {args.rows}; merge them with --merge {args.rows}")
    text = render(load_rows(args.rows))
    print(text)
    if args.write:
        write_section("rerank-budget", text, "Where re-ranking pays: budget curves (`benchmarks/rerank_budget.py`)")


if __name__ == "__main__":
    main()
