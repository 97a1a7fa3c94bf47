"""How often MLA's word-level texts have false negatives in a batch: a short text such as "glasses"
or "red backpack" also describes other people in the batch, yet the identity-only contrastive loss
pushes it away from their images. Counted over one epoch of the trainer's own batches (sampler,
texts and attribute draws exactly as `ivt train` makes them), without training anything.

    python benchmarks/false_negatives.py --data data/synthpedes --write

A word-level text counts as having a false negative when at least one image of another identity
in its batch has all of the text's attribute phrases (the rule of
``align.word_positives=attributes``, which turns those pairs into positives).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ivt.config import DEMO_CONFIG, load_config
from ivt.data import load_dataset
from ivt.train.batches import EpochSampler, attribute_positives, build_samples, enabled_levels, pair_texts


def count(data: Path, batch_size: int, sampler: str, seed: int = 0) -> dict:
    """False-negative figures of the word-level texts over epoch 0 at this batch size."""
    cfg = load_config(DEMO_CONFIG, [f"data.path={data}", f"train.batch_size={batch_size}",
                                    f"train.sampler={sampler}", f"train.seed={seed}"])
    dataset = load_dataset(data)
    _, samples = build_samples(dataset, dataset.split("train"))
    t = cfg.train
    epoch_sampler = EpochSampler([s.pid for s in samples], t.batch_size, t.seed, t.sampler, t.k_per_id,
                                 attributes=[s.attributes for s in samples], group=t.similar_group)
    levels = enabled_levels(cfg.align)
    with_fn, others, total = 0, [], 0
    for b, indices in enumerate(epoch_sampler.epoch(0)):
        positions = [b * t.batch_size + j for j in range(len(indices))]
        pairs = pair_texts([samples[i] for i in indices], positions, levels, t.seed, 0)
        positives = attribute_positives(pairs)
        for j, attrs in enumerate(pairs.text_attributes):
            if pairs.levels[j] != "word" or not attrs:
                continue
            other_ids = {int(pairs.labels[i]) for i in positives[:, j].nonzero().flatten().tolist()}
            other_ids.discard(int(pairs.labels[j]))
            total += 1
            with_fn += bool(other_ids)
            others.append(len(other_ids))
    return {"batch": batch_size, "sampler": sampler, "texts": total, "rate": 100.0 * with_fn / max(total, 1),
            "mean_others": statistics.mean(others) if others else 0.0,
            "ids_per_batch": batch_size // max(t.k_per_id, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synthpedes"))
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--samplers", nargs="+", default=["identity", "similar"])
    ap.add_argument("--write", action="store_true", help="regenerate the false-negatives section of RESULTS.md")
    args = ap.parse_args()
    rows = [count(args.data, b, s) for s in args.samplers for b in args.batches]
    lines = [f"Word-level texts of one epoch of `{args.data}` (the demo recipe's levels and attribute draws): the "
             "share that has at least one image of *another* identity in its batch matching all of its attribute "
             "phrases, i.e. a false negative for the identity-only loss.", "",
             "| sampler | batch (ids) | word-level texts | with a false negative | other identities matched, mean |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['sampler']} | {r['batch']} ({r['ids_per_batch']}) | {r['texts']:,} | {r['rate']:.1f} % | "
              f"{r['mean_others']:.2f} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from results_md import write_section

        write_section("false-negatives", text, "False negatives of word-level texts (`benchmarks/false_negatives.py`)")


if __name__ == "__main__":
    main()
