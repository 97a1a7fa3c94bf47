"""Finding a person from a photo of them: image-to-image retrieval of the demo model, with and
without the image-image identity term (``loss.i2i_weight``), trained for the same wall-clock time.

    python benchmarks/i2i.py [--minutes 8] [--variants "loss.i2i_weight=0" "loss.i2i_weight=1 train.k_per_id=4"
                             "minutes=20 loss.i2i_weight=1"] [--fresh 7001 7002 7003 7004 7005] [--precision fp32]
                             [--note TEXT] [--write]

Each variant (config overrides on the demo recipe; a leading ``minutes=M`` gives it its own
budget, to show where a longer run gets) trains from scratch on the demo's SynthPedes draw for
``--minutes`` (one run at a time, on an idle machine: equal time, not equal steps) in
``--precision`` (fp32 by default: the slower kind of CPU, for which a CPU with native bf16 stands in
by running fp32), the best checkpoint chosen on its validation split as the demo does. Its
validation split gives text-to-image and image-to-image R1 (what a recipe is chosen on); the test
split of each fresh draw (other seeds, never used to choose) gives text-to-image R1 / mAP and
image-to-image R1 / mAP (every image a query against the other images of the split, itself left
out). Real crops (benchmarks/real, hand-labelled crops of vtest.avi): text-to-image mAP, and
image-to-image R1 / mAP among the crops of looks worn by one person. Each row names the CPU and
precision it was measured in, and each is kept in ``benchmarks/i2i_rows.json`` (a variant run again
on the same machine, with the same ``--note``, replaces its row); ``--write`` renders them all.

    python benchmarks/i2i.py --centring RUN [RUN ...] [--write]

Post-processing without training: ``--centring`` evaluates runs trained as above (their best
checkpoints) on the fresh draws' test splits with each image embedding minus the mean embedding of
its camera's images (SynthPedes records every image's camera), normalised again, against the
plain embeddings and the global mean taken out instead. Text queries are ranked against the
centred images too, to show whether it belongs to image queries only. Rows kept in
``benchmarks/i2i_centring_rows.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
from pathlib import Path

import torch

from ivt.data import load_dataset
from ivt.evaluate.retrieval import embed_split, evaluate_checkpoint, split_images, split_metrics
from ivt.index.same_person import CameraMeans
from ivt.inference import load
from ivt.runtime import cpu_info
from ivt.synth.generate import ATTRIBUTES
from learning import ensure_draw, run_one
from real_transfer import evaluate as evaluate_real
from results_md import keep_rows, load_rows, write_section

# Every row measured, kept in the repository (runs/ is scratch): --write renders them all.
ROWS = Path(__file__).with_name("i2i_rows.json")
CENTRING_ROWS = Path(__file__).with_name("i2i_centring_rows.json")


def mean_sd(values: list[float] | dict) -> str:
    """``mean ± std`` of the per-draw figures (a row kept from before rows held them: its summary)."""
    if isinstance(values, dict):
        return f"{values['mean']:.2f} ± {values['sd']:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def row_key(row: dict) -> tuple:
    return row["variant"], row["minutes"], row["note"], row["cpu"], row["precision"]


def render(rows: list[dict], fresh: list[int], ids: int) -> str:
    machines = sorted({(r["cpu"], r["precision"]) for r in rows})
    marks = {m: "*" * (i + 1) for i, m in enumerate(machines)}
    lines = [f"`benchmarks/i2i.py`: the demo recipe and variants, each trained the minutes given "
             f"(one run at a time, on an idle machine); fresh draws: seeds {', '.join(map(str, fresh))} of "
             f"{ids} identities, test splits, mean ± std over the draws. Compare rows measured on one machine "
             "(the mark after the steps): the steps a budget holds scale with its peak. "
             + "; ".join(f"{mark} {prec} on {cpu}" for (cpu, prec), mark in marks.items()) + ".",
             "",
             "| variant | minutes | steps | val R1 t→i / i→i | text→image R1 | text→image mAP | image→image R1 | "
             "image→image mAP | real crops: text→image mAP | real crops: image→image R1 / mAP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        notes = [r["note"]] if r["note"] else []
        if r["fresh"] != fresh:
            notes.append(f"fresh seeds {', '.join(map(str, r['fresh']))}")
        name = f"`{r['variant']}`" + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"| {name} | {r['minutes']:g} | {r['steps']:,}{marks[(r['cpu'], r['precision'])]} | "
                     f"{r['val_R1']:.2f} / {r['val_i2i_R1']:.2f} | {mean_sd(r['R1'])} | "
                     f"{mean_sd(r['mAP'])} | **{mean_sd(r['i2i_R1'])}** | {mean_sd(r['i2i_mAP'])} | "
                     f"{r['real_mAP']:.2f} | {r['real_i2i_R1']:.1f} / {r['real_i2i_mAP']:.1f} |")
    return "\n".join(lines)


def image_cameras(draw: Path, paths: list[Path]) -> torch.Tensor:
    """The camera of each image of a SynthPedes draw (its per-image metadata, keyed split/id/file)."""
    identities = json.loads((draw / ATTRIBUTES).read_text())
    camera = {m["file_path"]: m["camera"] for entry in identities.values() for m in entry["images"]}
    return torch.tensor([camera["/".join(Path(p).parts[-3:])] for p in paths])


def centred(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each (normalised) embedding minus the mean of its group's, normalised again (as search does:
    :class:`ivt.index.same_person.CameraMeans`)."""
    names = [str(int(g)) for g in groups]
    return torch.from_numpy(CameraMeans.of(x.float().numpy(), names).centred(x.float().numpy(), names))


def centring_row(run: Path, draws: list[Path], fresh: list[int]) -> dict:
    """Image-to-image (and text-to-image) R1 of ``run`` per draw: plain, global mean and camera
    means taken out of the image embeddings (evaluated in the precision it was trained in, as its
    row of section i2i was)."""
    trained = json.loads((run / "i2i_row.json").read_text())
    same_run = ("variant", "minutes", "steps", "cpu", "precision")
    kept = [r for r in load_rows(ROWS) if all(r[k] == trained[k] for k in same_run)]
    if kept:  # named as the section above names it (a note may have been reworded since)
        trained = kept[-1]
    model = load(run, device="cpu", which="best", precision=trained["precision"])
    figures: dict[str, list[float]] = {}
    for draw in draws:
        dataset = load_dataset(draw)
        records = dataset.split("test")
        emb = embed_split(model, dataset, records, 64, images=split_images(model, dataset, records))
        plain = split_metrics(emb, i2i=True)
        everyone = split_metrics(dataclasses.replace(emb, image=centred(emb.image, torch.zeros(
            len(emb.image), dtype=torch.long))), i2i=True)
        by_camera = split_metrics(dataclasses.replace(emb, image=centred(emb.image, image_cameras(
            draw, emb.image_paths))), i2i=True)
        for key, metrics, name in (("i2i_R1", plain, "i2i_R1"), ("i2i_R1_global", everyone, "i2i_R1"),
                                   ("i2i_R1_camera", by_camera, "i2i_R1"), ("R1", plain, "R1"),
                                   ("R1_camera", by_camera, "R1")):
            figures.setdefault(key, []).append(round(float(metrics[name]), 2))
    return {key: trained[key] for key in ("variant", "minutes", "note", "steps", "precision", "cpu")} | {
        "fresh": fresh, **figures}


def render_centring(rows: list[dict]) -> str:
    lines = ["`benchmarks/i2i.py --centring`: no training, the best checkpoints of runs of section i2i, "
             "evaluated on the test splits of the fresh draws (mean ± std over the draws; SynthPedes has 6 "
             "cameras, about 35 test images each). Image embeddings as they are, minus the mean of all, or "
             "minus the mean of their camera's images (then normalised again). The means come from the gallery "
             "itself, as an index would hold them.",
             "",
             "| run (section i2i) | minutes | steps | image→image R1 | − global mean | − camera means | "
             "text→image R1 | text→image R1, camera-centred images |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        name = f"`{r['variant']}`" + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {name} | {r['minutes']:g} | {r['steps']:,} ({r['precision']}, {r['cpu']}) | "
                     f"{mean_sd(r['i2i_R1'])} | {mean_sd(r['i2i_R1_global'])} | **{mean_sd(r['i2i_R1_camera'])}** | "
                     f"{mean_sd(r['R1'])} | {mean_sd(r['R1_camera'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/synthpedes"), help="the demo's draw (3,000 ids, seed 0)")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--variants", nargs="*", default=["loss.i2i_weight=0", "loss.i2i_weight=1"],
                    help="each a space-separated list of config overrides (none: only render the kept rows)")
    ap.add_argument("--note", default="", help="what sets these rows apart beyond their overrides (e.g. the code)")
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003, 7004, 7005])
    ap.add_argument("--ids", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("runs/i2i"))
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                    help="training and evaluation precision of the variants run now")
    ap.add_argument("--centring", type=Path, nargs="+", metavar="RUN",
                    help="no training: evaluate these runs (of --variants) with camera-centred image embeddings")
    ap.add_argument("--write", action="store_true", help="regenerate the section in benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.centring:
        draws = [ensure_draw(Path("data/fresh") / f"seed{s}-{args.ids}", args.ids, s, workers=2) for s in args.fresh]
        rows = [centring_row(run, draws, args.fresh) for run in args.centring]
        keep_rows(CENTRING_ROWS, rows, row_key)
        text = render_centring(load_rows(CENTRING_ROWS))
        print(text)
        if args.write:
            write_section("i2i-centring", text, "Finding a person from a photo: camera-centred embeddings")
        return
    if args.variants:
        data = ensure_draw(args.data, 3000, 0, workers=2)
        draws = [ensure_draw(Path("data/fresh") / f"seed{s}-{args.ids}", args.ids, s, workers=2) for s in args.fresh]

    for variant in args.variants:
        overrides = variant.split()
        minutes = args.minutes
        if overrides and overrides[0].startswith("minutes="):
            minutes = float(overrides.pop(0).split("=", 1)[1])
        out = args.out / re.sub(r"[^A-Za-z0-9_.=-]+", "_", variant)
        summary = run_one(data, out, [*overrides, f"train.precision={args.precision}"], 0, minutes=minutes,
                          threads=2)
        val = evaluate_checkpoint(out, data, split="val", device="cpu", i2i=True, precision=args.precision)
        per_draw = [evaluate_checkpoint(out, d, split="test", device="cpu", i2i=True, precision=args.precision)
                    for d in draws]
        real = evaluate_real(out, precision=args.precision)
        row = {"variant": " ".join(overrides), "minutes": minutes, "note": args.note, "fresh": args.fresh,
               "steps": summary["steps"],
               "precision": json.loads((out / "last.json").read_text()).get("precision", args.precision),
               "cpu": cpu_info().describe(),
               "val_R1": round(val["R1"], 2), "val_i2i_R1": round(val["i2i_R1"], 2), "real_mAP": round(real["mAP"], 2),
               "real_i2i_R1": round(real["i2i_R1"], 2), "real_i2i_mAP": round(real["i2i_mAP"], 2),
               **{key: [round(m[key], 2) for m in per_draw] for key in ("R1", "mAP", "i2i_R1", "i2i_mAP")}}
        (out / "i2i_row.json").write_text(json.dumps(row, indent=1))
        keep_rows(ROWS, [row], row_key)        # the same variant, note and machine replaced
        print(json.dumps(row), flush=True)

    text = render(load_rows(ROWS), args.fresh, args.ids)
    print(text)
    if args.write:
        write_section("i2i", text, "Finding a person from a photo (image to image)")


if __name__ == "__main__":
    main()
