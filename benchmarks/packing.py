"""What packing texts saves: padding, and the time of a demo training step, padded vs packed.

Builds the demo recipe's trainer (src/ivt/recipes/demo.yaml) on its SynthPedes draw and times, on the same
batches and side by side (alternating), the text side's forward + backward and the whole
``Trainer.train_step`` with ``train.pack_texts`` off and on. Run on an idle machine:

    python benchmarks/packing.py --write
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ivt.config import load_config
from ivt.model.packing import DEFAULT_ROW_LEN, pack_texts
from ivt.runtime import autocast
from ivt.train.trainer import Trainer
from learning import DEMO_CONFIG, ensure_draw
from throughput import cpu_model


def ms_per_batch(fn, batches: int) -> float:
    """Milliseconds per batch of one call of ``fn`` (which runs ``batches`` batches)."""
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0) / batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/synthpedes", help="the demo's draw (generated when missing)")
    ap.add_argument("--ids", type=int, default=3000)
    ap.add_argument("--batches", type=int, default=12, help="batches timed (after 2 warm-up ones)")
    ap.add_argument("--rounds", type=int, default=6, help="alternations of padded and packed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="regenerate the packing-speed section of RESULTS.md")
    args = ap.parse_args()
    data = ensure_draw(Path(args.data), args.ids, 0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(DEMO_CONFIG, [f"data.path={data}", f"train.out_dir={tmp}/run", "train.eval_every=0",
                                        f"train.threads={args.threads}"])
        trainer = Trainer(cfg)
        model = trainer.model
        batches = list(itertools.islice(trainer.batches(), args.batches + 2))
        chunks = [[trainer.tokenizer(c) for c in b.pairs.by_level()] for b in batches]
        real = sum(int(m.sum()) for ch in chunks for _, m in ch)
        padded_slots = sum(m.numel() for ch in chunks for _, m in ch)
        packed_slots = sum(pack_texts(ch).input_ids.numel() for ch in chunks)

        def text_side(packed: bool):
            def run() -> None:
                for ch in chunks[2:]:
                    with autocast(trainer.device, trainer.amp):
                        e = (model.encode_packed_text(pack_texts(ch)) if packed else
                             torch.cat([model.encode_text(ids, mask) for ids, mask in ch]))
                    e.float().pow(2).sum().backward()
            return run

        def steps(packed: bool):
            def run() -> None:
                trainer.pack_texts = packed
                for b in batches[2:]:
                    trainer.train_step(b)
            return run

        for fn in (text_side(False), text_side(True), steps(False), steps(True)):  # warm-up
            fn()
        n = args.batches
        times = {k: [] for k in ("text padded", "text packed", "step padded", "step packed")}
        for _ in range(args.rounds):
            times["text padded"].append(ms_per_batch(text_side(False), n))
            times["text packed"].append(ms_per_batch(text_side(True), n))
            times["step padded"].append(ms_per_batch(steps(False), n))
            times["step packed"].append(ms_per_batch(steps(True), n))
    ms = {k: statistics.median(v) for k, v in times.items()}
    texts = sum(ids.shape[0] for ids, _ in chunks[0])
    text = (f"The demo recipe (src/ivt/recipes/demo.yaml, {cfg.model.size} at width {model.config.width}, batch "
            f"{cfg.train.batch_size} = {texts} texts over 3 MLA levels) on {cpu_model()}, {args.threads} threads, "
            f"{trainer.precision.name} ({trainer.precision.reason}); {n} real batches of the demo draw, padded "
            f"and packed timed alternately ({args.rounds} rounds, median of the rounds, ms per batch). Padded = "
            f"each level padded to its longest text; packed = rows of {DEFAULT_ROW_LEN} slots (`train.pack_texts`).\n\n"
            "| | padded | packed | change |\n| --- | --- | --- | --- |\n"
            f"| text slots holding a token | {100 * real / padded_slots:.1f} % | "
            f"{100 * real / packed_slots:.1f} % | |\n"
            f"| text side, forward + backward | {ms['text padded']:.0f} ms | {ms['text packed']:.0f} ms | "
            f"{100 * (ms['text packed'] / ms['text padded'] - 1):+.0f} % |\n"
            f"| whole training step (`Trainer.train_step`) | {ms['step padded']:.0f} ms | {ms['step packed']:.0f} ms "
            f"| {100 * (ms['step packed'] / ms['step padded'] - 1):+.0f} % |")
    print(text)
    if args.write:
        from results_md import write_section

        write_section("packing-speed", text, "Text packing (`benchmarks/packing.py`)")


if __name__ == "__main__":
    main()
