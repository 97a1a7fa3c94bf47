"""What a trained model's image features carry, attribute by attribute, against what the pixels
allow (issue: re-ranking with IVT's own encoder; why a re-ranker over the cached states gains
about one point of R1).

The failures of the cosine ranking are look-alikes that differ in one slot: hair, shoes, bag,
gender (section rerank-headroom). A re-ranker runs its joint blocks over the image states the
retriever caches, so it can only tell those people apart if the states carry those slots. This
script measures that with linear probes, and sets them against a supervised reference:

- **Probes.** A multinomial logistic regression (standardised inputs, L2, L-BFGS) per attribute,
  fitted on the run's own training images (the generator's labels, only where the slot is
  visible) and scored on the test images of fresh draws (other seeds, never used to choose), on:
  the image embedding; the image states entering the last ``--layers`` blocks (what a re-ranker of
  that many joint blocks caches; all tokens, flattened); the patch tokens entering the first
  block; and the embedding of the image's own captions (what the text side knows).
- **Pixels.** A small convolutional network trained with the attribute labels themselves, from
  scratch for ``--cnn-seconds`` at the model's image size: a lower bound on what the pixels show
  (the retriever never sees a label; this is a reference, not a competitor).

    python benchmarks/perception.py --runs runs/demo [--write]
    python benchmarks/perception.py --write          # render the kept rows

Rows are kept in ``benchmarks/perception_rows.json`` (runs/ is scratch).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from learning import ensure_draw
from rerank_headroom import SLOT_FIELDS, _truth
from results_md import keep_rows, load_rows, write_section

ROWS = Path(__file__).with_name("perception_rows.json")
#: The attributes probed (categorical; the slot whose visibility they need comes from SLOT_FIELDS).
FIELDS = ("gender", "hair_length", "hair_colour", "upper_type", "upper_colour", "lower_type", "lower_colour",
          "shoes_type", "shoes_colour", "bag", "headwear")
SLOT_OF = {f: slot for slot, fields in SLOT_FIELDS.items() for f in fields}
IMAGE_PROBES = ("embedding", "joint states", "patch tokens")     # what the image side carries
PROBES = (*IMAGE_PROBES, "captions")
FEATURES = ("majority", *PROBES, "pixels")


@dataclasses.dataclass
class Images:
    """The images of one split, their features and their labels (None where the slot is hidden)."""

    pixels: torch.Tensor                          # uint8 (N, 3, H, W) at the model's size
    features: dict[str, torch.Tensor]
    labels: dict[str, list[str | None]]


def read_split(model, draw: Path, split: str, layers: int) -> Images:
    """Decode ``split`` of ``draw`` and compute every probed feature with ``model`` (frozen)."""
    from ivt.data import load_dataset
    from ivt.evaluate.retrieval import split_images
    from ivt.runtime import autocast

    dataset = load_dataset(draw)
    records = dataset.split(split)
    identities, visible = _truth(draw)
    pixels = split_images(model, dataset, records)
    depth = model.encoder.config.depth
    feats: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
    with torch.inference_mode():
        for name, deep in (("joint states", layers), ("patch tokens", depth)):
            model.encoder.config = dataclasses.replace(model.encoder.config, itm_layers=deep)
            for start in range(0, len(pixels), 256):
                with autocast(model.device, model.dtype):
                    emb, states = model.encoder.encode_image_with_states(model.transform(pixels[start:start + 256]))
                feats[name].append(states.float().flatten(1))
                if name == "joint states":
                    feats["embedding"].append(F.normalize(emb.float(), dim=-1))
    captions = model.encode_texts([c for r in records for c in r.captions])
    owner = torch.tensor([i for i, r in enumerate(records) for _ in r.captions])
    per_image = torch.zeros(len(records), captions.shape[1]).index_add_(0, owner, captions)
    features = {k: torch.cat(v) for k, v in feats.items()}
    features["captions"] = F.normalize(per_image, dim=-1)
    labels = {f: [str(identities[str(r.raw_pid)]["attributes"][f]) if SLOT_OF[f] in visible[r.image] else None
                  for r in records] for f in FIELDS}
    return Images(pixels, features, labels)


def _targets(labels: list[str | None], values: list[str]) -> torch.Tensor:
    """Class indices of ``labels`` in ``values``; -100 (ignored) where hidden or unseen in training."""
    return torch.tensor([values.index(v) if v in values else -100 for v in labels])


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int,
                 l2: float = 1e-2) -> Callable[[torch.Tensor], torch.Tensor]:
    """A multinomial logistic regression on standardised ``x`` (rows with y = -100 left out):
    features -> logits."""
    keep = y >= 0
    x, y = x[keep], y[keep]
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = nn.Linear(x.shape[1], classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(z), y) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda features: linear((features - mean) / std)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.MaxPool2d(2))


class PixelProbe(nn.Module):
    """A small VGG-style network with one linear head per attribute, trained on the labels."""

    def __init__(self, classes: dict[str, int]) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_block(3, 24), _conv_block(24, 48), _conv_block(48, 96),
                                  _conv_block(96, 128), nn.AdaptiveAvgPool2d((4, 2)), nn.Flatten())
        self.heads = nn.ModuleDict({f: nn.Linear(128 * 8, n) for f, n in classes.items()})
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = ((pixels.float() / 255 - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        h = self.body(x)
        return {f: head(h) for f, head in self.heads.items()}


def train_pixel_probe(train: Images, values: dict[str, list[str]], seconds: float, seed: int) -> tuple[PixelProbe, int]:
    """Train :class:`PixelProbe` on ``train`` for ``seconds`` (batches of 64, horizontal flips)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = PixelProbe({f: len(v) for f, v in values.items()})
    targets = {f: _targets(train.labels[f], values[f]) for f in FIELDS}
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    net.train()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        idx = torch.randint(len(train.pixels), (64,), generator=gen)
        x = train.pixels[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        out = net(x)
        loss = sum(F.cross_entropy(out[f], targets[f][idx], ignore_index=-100)
                   for f in FIELDS if bool((targets[f][idx] >= 0).any()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    keep = y >= 0
    return 100 * float((logits[keep].argmax(1) == y[keep]).float().mean())


def measure(run: Path, draws: list[Path], layers: int, cnn_seconds: float, seed: int) -> dict:
    from ivt.inference import load
    from rerank import data_of
    from rerank_budget import machine

    model = load(run, device="cpu")
    train = read_split(model, data_of(run), "train", layers)
    tests = {d.name: read_split(model, d, "test", layers) for d in draws}
    values = {f: sorted({v for v in train.labels[f] if v is not None}) for f in FIELDS}
    acc: dict[str, dict[str, list[float]]] = {f: collections.defaultdict(list) for f in FIELDS}
    for f in FIELDS:
        y = _targets(train.labels[f], values[f])
        counts = collections.Counter(int(v) for v in y if v >= 0)
        majority = counts.most_common(1)[0][0]
        probes = {k: linear_probe(train.features[k], y, len(values[f])) for k in PROBES}
        for test in tests.values():
            yt = _targets(test.labels[f], values[f])
            acc[f]["majority"].append(100 * float((yt[yt >= 0] == majority).float().mean()))
            with torch.no_grad():
                for k, probe in probes.items():
                    acc[f][k].append(accuracy(probe(test.features[k]), yt))
    net, cnn_steps = train_pixel_probe(train, values, cnn_seconds, seed)
    with torch.no_grad():
        for test in tests.values():
            out = {f: torch.cat([net(test.pixels[i:i + 256])[f] for i in range(0, len(test.pixels), 256)])
                   for f in FIELDS}
            for f in FIELDS:
                acc[f]["pixels"].append(accuracy(out[f], _targets(test.labels[f], values[f])))
    run_steps = json.loads((run / "last.state.json").read_text())["step"]
    return {"machine": machine("cpu"), "run": str(run), "run_steps": run_steps, "layers": layers,
            "depth": model.encoder.config.depth, "image_size": list(model.image_size),
            "cnn_seconds": cnn_seconds, "cnn_steps": cnn_steps, "seed": seed, "draws": [d.name for d in draws],
            "values": {f: len(v) for f, v in values.items()},
            "accuracy": {f: {k: round(statistics.mean(v), 1) for k, v in acc[f].items()} for f in FIELDS}}


def row_key(row: dict) -> tuple:
    return row["machine"], row["run"], row["run_steps"], row["layers"], row["cnn_seconds"], row["seed"]


def render(rows: list[dict]) -> str:
    """One table per kept row: accuracy per attribute and feature, mean over the fresh draws."""
    if not rows:
        return "No rows kept yet."
    lines = ["`benchmarks/perception.py`: linear probes on a trained model's frozen features, fitted on its "
             "training images and scored on the test images of fresh draws "
             f"({', '.join(sorted({d for r in rows for d in r['draws']}))}; mean accuracy %, only images that "
             "show the slot), against the majority class and a small network trained on the pixels with the "
             "labels themselves (a lower bound on what the pixels show). Joint states: all tokens entering the "
             "last blocks, what a re-ranker of that many joint blocks caches; patch tokens: those entering the "
             "first block."]
    for r in rows:
        lines += ["", f"**{r['run']}** ({r['run_steps']:,} steps, {r['image_size'][0]}x{r['image_size'][1]} "
                  f"images, depth {r['depth']}) on {r['machine']}; joint states of the last {r['layers']} "
                  f"blocks; pixels: {r['cnn_seconds']:g} s of training ({r['cnn_steps']:,} steps of 64).", "",
                  "| attribute | values | " + " | ".join(FEATURES) + " |", "|" + " --- |" * (len(FEATURES) + 2)]
        for f in FIELDS:
            a = r["accuracy"][f]
            best_probe = max(a[k] for k in IMAGE_PROBES)
            cells = [f"**{a[k]:.1f}**" if k in IMAGE_PROBES and a[k] == best_probe else f"{a[k]:.1f}"
                     for k in FEATURES]
            lines.append(f"| {f.replace('_', ' ')} | {r['values'][f]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="*", default=[])
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003, 7004, 7005])
    ap.add_argument("--layers", type=int, default=2, help="joint blocks whose entering states are probed")
    ap.add_argument("--cnn-seconds", type=float, default=240.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=Path, default=ROWS)
    ap.add_argument("--write", action="store_true", help="regenerate the section in benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.cnn_seconds <= 0 or args.layers < 1:
        raise SystemExit("--cnn-seconds must be > 0 and --layers >= 1")
    draws = [ensure_draw(Path("data/fresh") / f"seed{s}-400", 400, s) for s in args.fresh] if args.runs else []
    for run in args.runs:
        row = measure(run, draws, args.layers, args.cnn_seconds, args.seed)
        keep_rows(args.rows, [row], row_key)
        print(render([row]), flush=True)
    if args.write:
        write_section("perception", render(load_rows(args.rows)),
                      "What the image features carry (`benchmarks/perception.py`)")


if __name__ == "__main__":
    main()
