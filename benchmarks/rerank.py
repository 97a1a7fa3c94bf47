"""Re-ranking with IVT's own encoder: accuracy with and without it, at equal training time, and its cost.

Each run is evaluated on its demo draw's test split, on fresh SynthPedes draws (never used to
choose anything) and on the hand-labelled real crops of benchmarks/real: the cosine ranking
(K = 0) and the ranking whose top K the image-text matching head re-orders (K = 8, 16, 32, 64).
Runs without an ITM head (the dual encoder trained in the same time) get the K = 0 row only.
The cost is the time to re-rank K candidates per query (CPU, the run's precision), measured on
the demo test split, and the memory the cached states take per gallery image.

    python benchmarks/rerank.py --runs runs/demo runs/demo-itm --fresh 7001 7002 7003 7004 7005 [--write]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ivt.data import load_dataset
from ivt.evaluate.metrics import ranking_metrics
from ivt.evaluate.rerank import rerank_scores
from ivt.evaluate.retrieval import embed_split, split_images, split_metrics
from ivt.inference import load
from ivt.runtime import cpu_info
from learning import ensure_draw
from real_transfer import load_spec
from throughput import sync

REAL = Path(__file__).with_name("real")
KS = (8, 16, 32, 64)


def set_metrics(model, data: Path, ks: tuple[int, ...], by: str = "fused",
                weight: float | None = None) -> tuple[dict[int, dict], dict, dict]:
    """{K: metrics} of one test split (K = 0: cosine; the top K ordered ``by`` with ``weight`` as
    :func:`ivt.evaluate.rerank.rerank_scores`), the cost figures of re-ranking there, and
    image-to-image metrics of the same embeddings (each image a query, itself left out)."""
    dataset = load_dataset(data)
    records = dataset.split("test")
    images = split_images(model, dataset, records)
    emb = embed_split(model, dataset, records, images=images)
    sim = emb.text @ emb.image.T
    both = split_metrics(emb, i2i=True)
    out = {0: {k: v for k, v in both.items() if not k.startswith("i2i_")}}
    same = {k[len("i2i_"):]: v for k, v in both.items() if k.startswith("i2i_")}
    cost = {}
    if model.can_rerank:
        _, states = model.encode_images_with_states(images)
        cost["bytes_per_image"] = states[0].numel() * 4
        if ks:                               # untimed: the first call's warm-up (kernels, allocator)
            rerank_scores(model, sim[:1], emb.captions[:1], states, min(ks), by=by, weight=weight)
        for k in ks:
            sync(model.device.type)
            start = time.perf_counter()
            scores = rerank_scores(model, sim, emb.captions, states, k, by=by, weight=weight)
            sync(model.device.type)
            cost[k] = 1000 * (time.perf_counter() - start) / len(emb.captions)
            out[k] = ranking_metrics(scores, emb.text_pids, emb.image_pids)
    return out, cost, same


def real_metrics(model, ks: tuple[int, ...], by: str = "fused", weight: float | None = None) -> dict[int, float]:
    """{K: mAP} on the real crops (every crop is the gallery of every query; the top K ordered ``by``)."""
    spec = load_spec()
    crops = [REAL / "crops" / c["file"] for c in spec["crops"]]
    texts = [q["text"] for q in spec["queries"]]
    ids = [c["id"] for c in spec["crops"]]
    relevant = torch.tensor([[i in set(q["matches"]) for i in ids] for q in spec["queries"]]).long()

    def m_ap(scores: torch.Tensor) -> float:
        return statistics.mean(ranking_metrics(s[None], [1], rel, ks=(1,))["mAP"] for s, rel in zip(scores, relevant))

    if not model.can_rerank:
        return {0: m_ap(model.encode_texts(texts) @ model.encode_images(crops).T)}
    emb, states = model.encode_images_with_states(crops)
    sim = model.encode_texts(texts) @ emb.T
    return {0: m_ap(sim), **{k: m_ap(rerank_scores(model, sim, texts, states, k, by=by, weight=weight))
                             for k in ks}}


def base_cost(ks: tuple[int, ...], text_len: int = 64, repeats: int = 3, device: str = "cpu",
              precision: str = "fp32") -> str:
    """Milliseconds to re-rank K candidates of one query with a ``base`` encoder (the paper's size:
    384x128 images at stride 12, 311 image tokens; weights do not change the cost), from cached
    states, on ``device`` in ``precision`` (``fp32`` or an autocast dtype: ``bf16``, ``fp16``)."""
    from ivt.model import IVTEncoder, model_config
    from ivt.runtime import autocast, resolve_device

    dev = resolve_device(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    encoder = IVTEncoder(model_config("base", itm=True)).eval().to(dev)
    tokens, width = 1 + encoder.config.num_patches, encoder.config.width
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(1, text_len, width, generator=gen).to(dev)
    mask = torch.ones(1, text_len, dtype=torch.long, device=dev)
    out = []
    with torch.inference_mode(), autocast(dev, dtype):
        for k in ks:
            images = torch.randn(k, tokens, width, generator=gen).to(dev)
            encoder.itm_logits(images, text, mask)                     # warm-up
            sync(dev.type)
            start = time.perf_counter()
            for _ in range(repeats):
                encoder.itm_logits(images, text, mask)
            sync(dev.type)
            out.append(f"{1000 * (time.perf_counter() - start) / repeats:.1f} ms (K = {k})")
    where = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
             else f"{cpu_info().describe()}, {torch.get_num_threads()} threads")
    return (f"base ({tokens} image tokens, a {text_len}-token text, width {width}, 1 joint block, {precision}, "
            f"{where}): re-ranking K candidates costs " + ", ".join(out)
            + f" per query; the cached states take {tokens * width * 4 / 1024:.0f} KiB per gallery image "
            f"(float32).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", default=[Path("runs/demo"), Path("runs/demo-itm")])
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003, 7004, 7005])
    ap.add_argument("--ids", type=int, default=400)
    ap.add_argument("--write", action="store_true", help="regenerate the rerank section of RESULTS.md")
    args = ap.parse_args()
    draws = {f"fresh {s}": ensure_draw(Path("data/fresh") / f"seed{s}-{args.ids}", args.ids, s, workers=2)
             for s in args.fresh}
    lines = [f"Runs evaluated on {cpu_info().describe()} (fp32, 2 threads). Fresh draws: seeds "
             f"{', '.join(map(str, args.fresh))} ({args.ids} identities each, test splits). K = 0: the cosine "
             f"ranking; K > 0: its top K re-ordered by the image-text matching head.", "",
             "| run | steps (train min) | K | fresh R1 | fresh R5 | fresh mAP | demo test R1 / mAP | real crops mAP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    speeds = []
    costs = []
    for run in args.runs:
        model = load(run, device="cpu", precision="fp32")
        last = json.loads((run / "last.json").read_text())
        state = json.loads((run / "last.state.json").read_text())
        ks = KS if model.can_rerank else ()
        # A shared machine's speed drifts: say what each run's own probe measured when it started.
        speeds.append(f"{run.name}: {last.get('precision', '?')} ({last.get('precision_reason', 'no probe recorded')})")
        test, cost, _ = set_metrics(model, data_of(run), ks)
        fresh = {name: set_metrics(model, d, ks)[0] for name, d in draws.items()}
        real = real_metrics(model, ks)
        for k in (0, *ks):
            r1 = [fresh[n][k]["R1"] for n in draws]
            r5 = [fresh[n][k]["R5"] for n in draws]
            mp = [fresh[n][k]["mAP"] for n in draws]
            lines.append(f"| {run.name} | {last['step']:,} ({state['train_seconds'] / 60:.1f}) | {k} | "
                         f"**{statistics.mean(r1):.2f}** ± {statistics.stdev(r1):.2f} | {statistics.mean(r5):.2f} | "
                         f"**{statistics.mean(mp):.2f}** ± {statistics.stdev(mp):.2f} | "
                         f"{test[k]['R1']:.2f} / {test[k]['mAP']:.2f} | {real[k]:.1f} |")
            print(lines[-1], flush=True)
        if cost:
            costs.append(f"{run.name}: re-ranking K candidates costs " + ", ".join(
                f"{cost[k]:.2f} ms (K = {k})" for k in ks) + f" per query; the cached states take "
                f"{cost['bytes_per_image'] / 1024:.1f} KiB per gallery image (float32).")
    # The cost of the matching loss per training step, side by side on this machine (round-robin).
    from ablation import step_seconds

    step = step_seconds(data_of(args.runs[0]), {"dual": [], "itm": ["model.itm=true"]}, threads=2)
    costs.append(f"A training step of the demo recipe (median of round-robin steps, same machine, same moment): "
                 f"{1000 * step['dual']:.0f} ms without the matching loss, {1000 * step['itm']:.0f} ms with it "
                 f"({step['itm'] / step['dual']:.2f}x).")
    costs.append(base_cost(KS))
    text = "\n".join(lines + ["", "Trained in: " + "; ".join(speeds) + ".", ""] + costs)
    print(text)
    if args.write:
        from results_md import write_section

        write_section("rerank", text, "Re-ranking with IVT's own encoder (`benchmarks/rerank.py`)")


def data_of(run: Path) -> Path:
    """The dataset a run trained on (its config's ``data.path``)."""
    import yaml

    return Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["path"])


if __name__ == "__main__":
    main()
