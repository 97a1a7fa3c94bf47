"""The real dev set: ivt on hand-labelled people of a real pedestrian video, with chance figures and
the ImageNet-features baseline for find-this-person.

``real_dev/labels.json``: the people ivt's own video pipeline (HOG detector, background filter, IoU
tracker, every frame) finds in **frames 0-399** of ``vtest.avi``, grouped by hand into people, each
with a description in the CUHK-PEDES style, and attribute queries listing every person they fit.
Frames 400-795 are held out for independent checks: nothing here reads them (the script refuses a
label from there), and nothing is chosen with them. Crops are cut from the video as ``ivt index
build --video`` cuts them (the box grown by 0.1 on every side).

- text to image: every query against every labelled crop; AP and R1 per query, with chance;
- image to image (find this person): each crop of a one-person identity against every crop outside
  its own track, the same person's crops relevant; plain cosine and camera-centred (this is one
  camera: every embedding minus the crops' mean, as ``ivt.index.same_person`` centres); beside it
  the ImageNet baseline (``ivt.model.appearance``: DeepSORT's MobileNetV2 embedder), plain and
  centred, and ivt's embedding joined with it (score = ivt cosine + lambda x ImageNet cosine, both
  centred).

    make vtest
    python benchmarks/real_dev.py --checkpoint runs/demo [RUN ...] [--write TAG]
"""
from __future__ import annotations

import argparse
import json
import statistics
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ivt.evaluate.metrics import chance_ap, ranking_metrics

LABELS = Path(__file__).with_name("real_dev") / "labels.json"
HELD_OUT_FROM = 400          # the first held-out frame
MARGIN = 0.1                 # as ivt index build --video cuts crops
LAMBDAS = (0.25, 0.5, 1.0)    # weights of the ImageNet cosine joined to ivt's


def load_labels(path: Path = LABELS) -> dict:
    """The labels, refusing any crop from the held-out frames."""
    spec = json.loads(path.read_text())
    late = [c["frame"] for c in spec["crops"] if c["frame"] >= HELD_OUT_FROM]
    if late:
        raise SystemExit(f"{path}: crops from held-out frames {sorted(set(late))[:5]}: the dev set is frames "
                         f"0-{HELD_OUT_FROM - 1} only")
    return spec


def cut_crops(video: Path, spec: dict) -> list[Image.Image]:
    """The labelled crops, cut from the first ``HELD_OUT_FROM`` frames of ``video``."""
    from ivt.video.people import crop_box
    from ivt.video.reader import read_frames

    wanted = defaultdict(list)
    for n, c in enumerate(spec["crops"]):
        wanted[c["frame"]].append(n)
    crops: list[Image.Image | None] = [None] * len(spec["crops"])
    for frame in read_frames(video, limit=HELD_OUT_FROM):
        height, width = frame.image.shape[:2]
        for n in wanted.get(frame.index, ()):
            left, top, right, bottom = crop_box(tuple(spec["crops"][n]["box"]), MARGIN, width, height)
            crops[n] = Image.fromarray(frame.image[top:bottom, left:right].copy())
    missing = [n for n, c in enumerate(crops) if c is None]
    if missing:
        raise SystemExit(f"{video}: frames {sorted({spec['crops'][n]['frame'] for n in missing})[:5]} not read")
    return crops


def text_to_image(spec: dict, texts: torch.Tensor, images: torch.Tensor) -> list[dict]:
    """Per query: AP / top-1 over every labelled crop, with chance."""
    people = [c["person"] for c in spec["crops"]]
    rows = []
    for q, s in zip(spec["queries"], texts @ images.t()):
        relevant = torch.tensor([p in q["matches"] for p in people])
        m = ranking_metrics(s[None], [1], relevant.long(), ks=(1,))
        n = int(relevant.sum())
        rows.append({"text": q["text"], "kind": q["kind"], "relevant": n, "AP": m["mAP"], "top1": m["R1"] == 100.0,
                     "chance_AP": 100 * chance_ap(n, len(people)), "chance_top1": 100 * n / len(people)})
    return rows


def image_to_image(spec: dict, scores: torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict:
    """Find this person: each crop of a one-person identity a query against the crops outside its
    own track (the same person's relevant, the all-black group never); mAP, R1 and chance.
    ``scores``: the (N, N) similarities, or a function of the query and gallery rows giving theirs."""
    one = {k for k, p in spec["people"].items() if p["one_person"]}
    crops = spec["crops"]
    codes = {k: i for i, k in enumerate(sorted(spec["people"]))}
    pids = torch.tensor([codes[c["person"]] if c["person"] in one else -1 - n for n, c in enumerate(crops)])
    tracks = torch.tensor([c["track"] for c in crops])
    ap_sum = r1_sum = chance_sum = 0.0
    queries = 0
    for track in tracks.unique().tolist():
        q = ((tracks == track) & (pids >= 0)).nonzero().flatten()
        g = (tracks != track).nonzero().flatten()
        if len(q) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # a person seen in one track only has no match
            block = scores(q, g) if callable(scores) else scores[q][:, g]
            m = ranking_metrics(block, pids[q], pids[g], ks=(1,))
        used = m["num_queries"] - m["num_skipped_queries"]
        if used == 0:
            continue
        ap_sum += m["mAP"] * used
        r1_sum += m["R1"] * used
        for i in q.tolist():
            n = int((pids[g] == pids[i]).sum())
            chance_sum += 100 * chance_ap(n, len(g)) if n else 0.0
        queries += used
    return {"mAP": ap_sum / queries, "R1": r1_sum / queries, "chance_mAP": chance_sum / queries, "queries": queries}


def shipped(vectors: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The ranking `ivt search --like` ships (``ivt.index.same_person``: camera-centred, the best 50
    re-ranked k-reciprocally) of centred ``vectors``, as scores that sort the same way."""
    from ivt.index.same_person import same_person_order

    x = vectors.numpy()

    def scores(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(q), len(g))
        for row, i in enumerate(q.tolist()):
            order, _ = same_person_order(x[i], x[g.numpy()])
            out[row, torch.from_numpy(order)] = -torch.arange(len(g), dtype=torch.float32)
        return out
    return scores


def centred(x: torch.Tensor) -> torch.Tensor:
    """Every embedding minus their mean, L2-normalised (one camera)."""
    return F.normalize(x - x.mean(dim=0, keepdim=True), dim=-1)


def evaluate(run: Path, spec: dict, crops: list[Image.Image], imagenet: torch.Tensor) -> dict:
    """Text-to-image rows and image-to-image figures of the model in ``run``."""
    from ivt.inference import load

    model = load(run, device="cpu")
    images = model.encode_images(crops)
    texts = model.encode_texts([q["text"] for q in spec["queries"]])
    rows = text_to_image(spec, texts, images)
    mine, theirs = centred(images), centred(imagenet)
    joined = {lam: image_to_image(spec, mine @ mine.t() + lam * (theirs @ theirs.t())) for lam in LAMBDAS}
    best = json.loads((run / "best.json").read_text()) if (run / "best.json").is_file() else {}
    last = json.loads((run / "last.json").read_text()) if (run / "last.json").is_file() else {}
    stem = model.config.stem or "patch"
    tune = f", {model.config.stem_tune}" if model.config.stem in ("mobilenetv2", "resnet18", "resnet50") else ""
    return {"run": str(run), "model": f"{stem} s{model.config.patch_stride}{tune}", "steps": last.get("step"),
            "precision": best.get("precision"), "val": best.get("metrics", {}), "t2i": rows,
            "i2i": image_to_image(spec, images @ images.t()),
            "i2i_centred": image_to_image(spec, mine @ mine.t()), "i2i_shipped": image_to_image(spec, shipped(mine)),
            "i2i_joined": joined}


def summary(rows: list[dict], kind: str | None = None) -> dict:
    """mAP / R1 and their chance over the rows of one kind (all when None)."""
    rows = [r for r in rows if kind is None or r["kind"] == kind]
    return {key: statistics.mean(r[key] for r in rows) for key in ("AP", "chance_AP", "chance_top1")} | \
        {"R1": 100 * statistics.mean(r["top1"] for r in rows), "n": len(rows)}


def report(results: list[dict], spec: dict, baseline: dict) -> str:
    """The markdown table of every run and the baseline."""
    one = sum(p["one_person"] for p in spec["people"].values())
    head = (f"{len(spec['crops'])} crops of frames 0-{HELD_OUT_FROM - 1} ({len(spec['people'])} labelled people, "
            f"{one} of them one person each), {len(spec['queries'])} queries. Image to image: "
            f"{baseline['plain']['queries']} queries, each against the crops outside its own track.")
    lines = [head, "", "| run | stem | steps | SynthPedes val R1 / mAP | t2i mAP (chance) | t2i R1 | "
             "person descriptions mAP | attributes mAP | "
             "i2i mAP plain / centred / shipped (chance) | i2i R1 centred | i2i mAP joined with ImageNet, lambda " +
             " / ".join(f"{lam:g}" for lam in LAMBDAS) + " |", "| --- " * 11 + "|"]
    for r in results:
        a, p, t = summary(r["t2i"]), summary(r["t2i"], "person"), summary(r["t2i"], "attribute")
        val = f"{r['val']['R1']:.1f} / {r['val']['mAP']:.1f}" if r["val"] else ""
        lines.append(f"| {r['run']} | {r['model']} | {r['steps'] or ''} | {val} | "
                     f"{a['AP']:.1f} ({a['chance_AP']:.1f}) | {a['R1']:.1f} | {p['AP']:.1f} | "
                     f"{t['AP']:.1f} | {r['i2i']['mAP']:.1f} / {r['i2i_centred']['mAP']:.1f} / "
                     f"{r['i2i_shipped']['mAP']:.1f} "
                     f"({r['i2i']['chance_mAP']:.1f}) | {r['i2i_centred']['R1']:.1f} | " +
                     " / ".join(f"{r['i2i_joined'][lam]['mAP']:.1f}" for lam in LAMBDAS) + " |")
    lines.append(f"| ImageNet MobileNetV2 (DeepSORT's embedder) | | | | | | | | {baseline['plain']['mAP']:.1f} / "
                 f"{baseline['centred']['mAP']:.1f} / {baseline['shipped']['mAP']:.1f} "
                 f"({baseline['plain']['chance_mAP']:.1f}) | "
                 f"{baseline['centred']['R1']:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", nargs="+", default=["runs/demo"], help="run directories")
    ap.add_argument("--video", type=Path, default=Path("examples/data/vtest.avi"))
    ap.add_argument("--note", default="", help="a line saying how the runs were trained (shown above the table)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--write", metavar="TAG", help="regenerate this tag's section of RESULTS.md")
    args = ap.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"{args.video}: no such video; `make vtest` fetches it")
    from ivt.model.appearance import appearance_features, load_mobilenetv2_features

    spec = load_labels()
    crops = cut_crops(args.video, spec)
    imagenet = appearance_features(load_mobilenetv2_features(), crops)
    baseline = {"plain": image_to_image(spec, imagenet @ imagenet.t()),
                "centred": image_to_image(spec, centred(imagenet) @ centred(imagenet).t()),
                "shipped": image_to_image(spec, shipped(centred(imagenet)))}
    results = [evaluate(Path(run), spec, crops, imagenet) for run in args.checkpoint]
    from ivt.runtime import cpu_info

    text = report(results, spec, baseline)
    text = (f"{args.note}\n\n" if args.note else "") + text + (
        f"\n\nEvaluated on {cpu_info().describe()}, {torch.get_num_threads()} threads; each run's `precision: auto` "
        f"(steps and the SynthPedes validation figures of its best checkpoint from its run directory).")
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "runs": results}, indent=1))
    if args.write:
        from results_md import write_section

        write_section(args.write, text, "Real dev set (`benchmarks/real_dev.py`)")


if __name__ == "__main__":
    main()
