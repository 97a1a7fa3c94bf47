"""Finding a person from a photo of them: image-to-image retrieval of the demo model, with and
without the image-image identity term (``loss.i2i_weight``), trained for the same wall-clock time.

    python benchmarks/i2i.py [--minutes 8] [--variants "loss.i2i_weight=0" "loss.i2i_weight=1 train.k_per_id=4"
                             "minutes=20 loss.i2i_weight=1"] [--fresh 7001 7002 7003 7004 7005] [--reuse] [--write]

Each variant (config overrides on the demo recipe; a leading ``minutes=M`` gives it its own
budget, to show where a longer run gets) trains from scratch on the demo's SynthPedes
draw for ``--minutes`` (one run at a time, on an idle machine: equal time, not equal steps), the
best checkpoint chosen on its validation split as the demo does. Its validation split gives
text-to-image and image-to-image R1 (what a recipe is chosen on); the test split of each fresh draw
(other seeds, never used to choose) gives text-to-image R1 / mAP and image-to-image R1 / mAP (every
image a query against the other images of the split, itself left out). Real crops (benchmarks/real,
hand-labelled crops of vtest.avi): text-to-image mAP, and image-to-image R1 / mAP among the crops
of looks worn by one person. ``--reuse`` takes a variant's figures from an
earlier run of this script (``runs/i2i/<variant>/i2i_row.json``) instead of training it again.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from ivt.evaluate.retrieval import evaluate_checkpoint
from ivt.runtime import cpu_info
from learning import ensure_draw, run_one
from real_transfer import evaluate as evaluate_real
from results_md import write_section


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/synthpedes"), help="the demo's draw (3,000 ids, seed 0)")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--variants", nargs="+", default=["loss.i2i_weight=0", "loss.i2i_weight=1"],
                    help="each a space-separated list of config overrides")
    ap.add_argument("--reuse", action="store_true", help="reuse the saved figures of variants already run")
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003, 7004, 7005])
    ap.add_argument("--ids", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("runs/i2i"))
    ap.add_argument("--write", action="store_true", help="regenerate the section in benchmarks/RESULTS.md")
    args = ap.parse_args()
    data = ensure_draw(args.data, 3000, 0, workers=2)
    draws = [ensure_draw(Path("data/fresh") / f"seed{s}-{args.ids}", args.ids, s, workers=2) for s in args.fresh]

    rows = []
    for variant in args.variants:
        overrides = variant.split()
        minutes = args.minutes
        if overrides and overrides[0].startswith("minutes="):
            minutes = float(overrides.pop(0).split("=", 1)[1])
        out = args.out / re.sub(r"[^A-Za-z0-9_.=-]+", "_", variant)
        saved = out / "i2i_row.json"
        if args.reuse and saved.exists():
            row = json.loads(saved.read_text())
            if "real_i2i_R1" not in row:          # saved before this figure existed: the run is still there
                real = evaluate_real(out)
                row.update(real_i2i_R1=round(real["i2i_R1"], 2), real_i2i_mAP=round(real["i2i_mAP"], 2))
                saved.write_text(json.dumps(row, indent=1))
            rows.append(row)
            continue
        summary = run_one(data, out, overrides, 0, minutes=minutes, threads=2, real=True)
        val = evaluate_checkpoint(out, data, split="val", device="cpu", i2i=True)
        per_draw = [evaluate_checkpoint(out, d, split="test", device="cpu", i2i=True) for d in draws]
        real = evaluate_real(out)
        row = {"variant": " ".join(overrides), "minutes": minutes, "steps": summary["steps"],
               "val_R1": round(val["R1"], 2), "val_i2i_R1": round(val["i2i_R1"], 2), "real_mAP": summary["real"]["mAP"],
               "real_i2i_R1": round(real["i2i_R1"], 2), "real_i2i_mAP": round(real["i2i_mAP"], 2),
               **{key: [round(m[key], 2) for m in per_draw] for key in ("R1", "mAP", "i2i_R1", "i2i_mAP")}}
        saved.write_text(json.dumps(row, indent=1))
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [f"`benchmarks/i2i.py`: the demo recipe and variants, each trained the minutes given "
             f"(one run at a time, fp32, on {cpu_info().describe()}); fresh draws: seeds "
             f"{', '.join(map(str, args.fresh))} of {args.ids} identities, test splits, mean ± std over the draws.",
             "",
             "| variant | minutes | steps | val R1 t→i / i→i | text→image R1 | text→image mAP | image→image R1 | "
             "image→image mAP | real crops: text→image mAP | real crops: image→image R1 / mAP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| `{r['variant']}` | {r['minutes']:g} | {r['steps']:,} | "
                     f"{r['val_R1']:.2f} / {r['val_i2i_R1']:.2f} | {mean_sd(r['R1'])} | "
                     f"{mean_sd(r['mAP'])} | **{mean_sd(r['i2i_R1'])}** | {mean_sd(r['i2i_mAP'])} | "
                     f"{r['real_mAP']:.2f} | {r['real_i2i_R1']:.1f} / {r['real_i2i_mAP']:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("i2i", text, "Finding a person from a photo (image to image)")


if __name__ == "__main__":
    main()
