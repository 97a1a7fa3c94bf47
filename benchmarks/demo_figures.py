"""What the model `make demo` trained is worth: its time and steps, its validation curve, its test
split, fresh SynthPedes draws of other seeds (never seen, never used to choose anything) and the
real crops of benchmarks/real, each against chance.

    make demo && python benchmarks/demo_figures.py --fresh 7001 7002 7003 --write

Run it after `make demo` on an idle machine (the timings are the demo's own, saved in
``runs/demo/demo.json``); the fresh draws are generated under ``data/fresh/`` when missing.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from ivt.data import load_dataset
from ivt.evaluate.metrics import chance_metrics
from ivt.evaluate.retrieval import evaluate_checkpoint
from ivt.runtime import cpu_info
from learning import ensure_draw
from real_transfer import evaluate as evaluate_real
from throughput import matmul_peak


def test_figures(run: Path, data: Path) -> dict:
    """Test-split metrics of ``run`` on ``data`` with the chance figures of the same split."""
    m = evaluate_checkpoint(run, data, split="test", device="cpu", i2i=True)
    test = load_dataset(data).split("test")
    chance = chance_metrics([r.pid for r in test for _ in r.captions], [r.pid for r in test])
    return {**{k: m[k] for k in ("R1", "R5", "R10", "mAP", "mINP", "num_queries", "num_gallery", "i2i_R1", "i2i_mAP")},
            "ids": len({r.pid for r in test}), "chance_R1": chance["R1"], "chance_mAP": chance["mAP"]}


def row(label: str, m: dict) -> str:
    return (f"| {label} | {m['ids']} ids, {m['num_queries']} queries x {m['num_gallery']} images | "
            f"**{m['R1']:.2f}** | {m['R5']:.2f} | {m['R10']:.2f} | **{m['mAP']:.2f}** | {m['mINP']:.2f} | "
            f"{m['chance_R1']:.2f} / {m['chance_mAP']:.2f} |")


def real_dev_figures(run: Path, video: Path) -> str | None:
    """One line of the real dev set's figures (benchmarks/real_dev.py), None without the video."""
    if not video.is_file():
        print(f"{video} is missing (`make vtest`): the real dev set is left out")
        return None
    import real_dev
    from ivt.model.appearance import appearance_features, load_mobilenetv2_features

    spec = real_dev.load_labels()
    crops = real_dev.cut_crops(video, spec)
    imagenet = appearance_features(load_mobilenetv2_features(), crops)
    base = real_dev.image_to_image(spec, real_dev.centred(imagenet) @ real_dev.centred(imagenet).t())
    r = real_dev.evaluate(run, spec, crops, imagenet)
    a, p, t = (real_dev.summary(r["t2i"], kind) for kind in (None, "person", "attribute"))
    return (f"Real dev set (benchmarks/real_dev.py: {len(spec['crops'])} crops of vtest.avi frames 0-399, "
            f"{len(spec['queries'])} queries): text to image mAP {a['AP']:.1f} (chance {a['chance_AP']:.1f}), R1 "
            f"{a['R1']:.1f}; person descriptions mAP {p['AP']:.1f}, attribute queries {t['AP']:.1f}. Find this "
            f"person (own track left out, camera-centred): mAP {r['i2i_centred']['mAP']:.1f}, R1 "
            f"{r['i2i_centred']['R1']:.1f}, the shipped ranking mAP {r['i2i_shipped']['mAP']:.1f}; ImageNet "
            f"MobileNetV2 features (camera-centred) {base['mAP']:.1f} (chance {base['chance_mAP']:.1f}).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003], help="seeds of fresh draws")
    ap.add_argument("--ids", type=int, default=400, help="identities of each fresh draw")
    ap.add_argument("--video", type=Path, default=Path("examples/data/vtest.avi"),
                    help="vtest.avi for the real dev set (`make vtest`; left out when missing)")
    ap.add_argument("--write", action="store_true", help="regenerate the demo section of RESULTS.md")
    args = ap.parse_args()
    info = json.loads((args.run / "demo.json").read_text())
    if "train_seconds" not in info:
        raise SystemExit(f"{args.run}/demo.json has no timings: run `make demo` to the end first")
    best = json.loads((args.run / "best.json").read_text())
    curve = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [c for c in curve if c.get("kind") == "eval" and c.get("split") == "val"]

    results = {"demo test": test_figures(args.run, Path(info["data"]))}
    for seed in args.fresh:
        draw = ensure_draw(Path("data/fresh") / f"seed{seed}-{args.ids}", args.ids, seed, workers=2)
        results[f"fresh draw, seed {seed}"] = test_figures(args.run, draw)
        print(row(f"fresh {seed}", results[f"fresh draw, seed {seed}"]), flush=True)
    real = evaluate_real(args.run)
    dev = real_dev_figures(args.run, args.video)

    fresh = [m for k, m in results.items() if k.startswith("fresh")]
    # Name the machine: the steps a demo makes scale with the peak of the precision it trained in.
    last = json.loads((args.run / "last.json").read_text())
    precision, reason = last.get("precision", "fp32"), last.get("precision_reason", "")
    peaks = {name: matmul_peak(dt, 1024, 3) for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    lines = [
        f"`make demo`: SynthPedes of {info['ids']} identities (seed {info['seed']}), then {info['steps']:,} "
        f"training steps ({info['epochs']:g} epochs) in {info['train_seconds'] / 60:.1f} min on "
        f"{info['torch_threads']} threads; the whole demo (generation, training, evaluation, result grids, "
        f"index and two searches) {info['total_seconds'] / 60:.1f} min. Best checkpoint chosen on the demo "
        f"draw's val split (step {best['step']}, val R1 {best['metrics']['R1']:.2f}, mAP "
        f"{best['metrics']['mAP']:.2f}). Trained in {precision} ({reason}) on {cpu_info().describe()}; "
        f"matmul peaks (1024x1024, {torch.get_num_threads()} threads): fp32 {peaks['fp32']:.0f}, bf16 "
        f"{peaks['bf16']:.0f} GFLOP/s. The steps a demo makes scale with the peak of its precision.",
        "",
        "| test set | size | R1 | R5 | R10 | mAP | mINP | chance R1 / mAP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(row(k, m) for k, m in results.items()),
    ]
    if len(fresh) > 1:
        r1, mp = [m["R1"] for m in fresh], [m["mAP"] for m in fresh]
        i1, im = [m["i2i_R1"] for m in fresh], [m["i2i_mAP"] for m in fresh]
        lines += ["", f"Fresh draws ({len(fresh)} seeds of {args.ids} identities, test splits): R1 "
                  f"{statistics.mean(r1):.2f} ± {statistics.stdev(r1):.2f}, mAP {statistics.mean(mp):.2f} ± "
                  f"{statistics.stdev(mp):.2f} (mean ± std). Image to image (each test image a query against "
                  f"the others, itself left out): R1 {statistics.mean(i1):.2f} ± {statistics.stdev(i1):.2f}, "
                  f"mAP {statistics.mean(im):.2f} ± {statistics.stdev(im):.2f}."]
    lines += ["", f"Real crops (benchmarks/real, {len(real['queries'])} queries x {real['gallery']} crops of "
              f"vtest.avi): mAP {real['mAP']:.1f} (chance {real['chance_mAP']:.1f}), R1 {real['R1']:.1f} "
              f"(chance {real['chance_R1']:.1f}). Image to image ({real['i2i_queries']} crops of looks worn by one "
              f"person, each against the other crops): R1 {real['i2i_R1']:.1f}, mAP {real['i2i_mAP']:.1f}.",
              *([""] + [dev] if dev else []),
              "", "Validation R1 / mAP along training (step: R1 / mAP):", "",
              "  ".join(f"{c['step']}: {c['R1']:.1f} / {c['mAP']:.1f}" for c in curve)]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from results_md import write_section

        write_section(f"demo-{precision}", text, f"Demo trained in {precision} (`make demo`, "
                      f"`benchmarks/demo_figures.py`)")


if __name__ == "__main__":
    main()
