"""A matching head trained after the retriever: does a re-ranker that sees the test-time candidates
in training see finer than the cosine?

    python benchmarks/rerank_after.py --run runs/demo --seconds 300 [--layers 2 --negatives 7 --hard 3
        --pool 32 --lr 1e-3]
    python benchmarks/rerank_after.py --write       # render the kept rows into RESULTS.md

The joint training of ``model.itm`` (benchmarks/rerank_budget.py) draws its hard negatives from the
batch, 32 pairs of about 8 identities: mostly people who differ in everything, while the cosine's
top K at test time are look-alikes. Here the retriever (a trained dual-encoder run, frozen) is
left as it is, and a re-ranker is trained on its own: a copy of the encoder's last ``--layers``
blocks run jointly over [image tokens; text tokens] (as ``IVTEncoder.itm_logits``) and a score
head, on the states the frozen encoder gives every training image and caption once (cached). Each
step scores 32 captions against their positive (an image of their identity) and ``--negatives``
negatives: ``--hard`` of them drawn from the caption's top ``--pool`` images of other identities
in the whole training gallery by the retriever's cosine (the test-time candidates), the rest at
random (without them the listwise loss stayed at chance, ln 8, for 541 steps); softmax
cross-entropy over the candidates. The run's validation split chooses the fusion weight
(``ivt.evaluate.rerank.choose_weight``), and the fresh draws' test splits (other seeds, never used
to choose) give R1 with the top K re-ordered (fused, and by the head alone). Not equal time: the
re-ranker's seconds come on top of the run's training. The figures decide whether this is worth
building into training.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from results_md import keep_rows, load_rows, write_section

ROWS = Path(__file__).with_name("rerank_after_rows.json")
KS = (8, 16, 32)


class Reranker(nn.Module):
    """A copy of the encoder's last ``layers`` blocks and final norm, run over an image's and a
    text's cached states together, and a score head on the fused first token (zero at the start)."""

    def __init__(self, encoder: nn.Module, layers: int) -> None:
        super().__init__()
        self.blocks = copy.deepcopy(encoder.blocks[len(encoder.blocks) - layers:])
        self.norm = copy.deepcopy(encoder.norm)
        self.head = nn.Linear(encoder.config.width, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, image_states: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        from ivt.model.transformer import key_padding_to_attn_mask

        split = image_states.shape[1]
        x = torch.cat([image_states, text_states.to(image_states.dtype)], dim=1)
        keep = torch.cat([torch.ones(len(x), split, dtype=torch.bool, device=x.device), text_mask.bool()], dim=1)
        mask = key_padding_to_attn_mask(keep)
        for block in self.blocks:
            x = block.forward_joint(x, mask, split)
        return self.head(self.norm(x[:, 0])).squeeze(-1).float()


class Split:
    """One split's images and captions through the frozen encoder: L2-normalised embeddings and
    the states entering its joint blocks (its config's ``itm_layers``, set by :func:`measure`; bf16
    on the CPU: what the re-ranker starts from)."""

    def __init__(self, model, data: Path, name: str) -> None:
        from ivt.data import load_dataset
        from ivt.evaluate.retrieval import split_images

        dataset = load_dataset(data)
        records = dataset.split(name)
        images = split_images(model, dataset, records)
        self.captions = [c for r in records for c in r.captions]
        own = torch.tensor([i for i, r in enumerate(records) for _ in r.captions])
        self.image_pids = torch.tensor([r.pid for r in records])
        self.text_pids = self.image_pids[own]
        self.image, self.image_states = self._images(model, images)
        self.text, self.text_states, self.text_mask = self._texts(model)

    @torch.inference_mode()
    def _images(self, model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ivt.runtime import autocast

        embeddings, states = [], []
        for start in range(0, len(images), 256):
            with autocast(model.device, model.dtype):
                emb, st = model.encoder.encode_image_with_states(model.transform(images[start:start + 256]))
            embeddings.append(emb.float())
            states.append(st.to(torch.bfloat16))
        return F.normalize(torch.cat(embeddings), dim=-1), torch.cat(states)

    @torch.inference_mode()
    def _texts(self, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ivt.runtime import autocast

        embeddings, states, masks = [], [], []
        for start in range(0, len(self.captions), 512):
            ids, mask = model.tokenizer(self.captions[start:start + 512])
            with autocast(model.device, model.dtype):
                emb, st, mask = model.encoder.encode_text_with_states(ids, mask)
            embeddings.append(emb.float())
            states.append(st.to(torch.bfloat16))
            masks.append(mask)
        width = max(m.shape[1] for m in masks)
        return (F.normalize(torch.cat(embeddings), dim=-1),
                torch.cat([F.pad(s, (0, 0, 0, width - s.shape[1])) for s in states]),
                torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks]))


def train_reranker(model, train: Split, args: argparse.Namespace) -> tuple[Reranker, dict]:
    """The re-ranker trained for ``args.seconds`` on ``train`` (see the module docstring)."""
    from ivt.runtime import autocast

    hard = torch.empty(len(train.captions), args.pool, dtype=torch.long)
    for start in range(0, len(train.captions), 2048):
        rows = slice(start, start + 2048)
        sim = train.text[rows] @ train.image.T
        sim[train.text_pids[rows, None] == train.image_pids[None]] = -2.0   # never the same identity
        hard[rows] = sim.topk(args.pool, dim=1).indices
    by_pid: dict[int, list[int]] = {}
    for i, pid in enumerate(train.image_pids.tolist()):
        by_pid.setdefault(pid, []).append(i)
    reranker = Reranker(model.encoder, args.layers)
    optimizer = torch.optim.AdamW(reranker.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    b, n = 32, 1 + args.negatives
    step, losses, start = 0, [], time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        queries = torch.randint(len(train.captions), (b,), generator=gen)
        positives = torch.tensor([by_pid[p][int(torch.randint(len(by_pid[p]), (1,), generator=gen))]
                                  for p in train.text_pids[queries].tolist()])
        pick = torch.rand(b, args.pool, generator=gen).argsort(dim=1)[:, :args.hard]
        negatives = torch.cat([hard[queries].gather(1, pick),
                               torch.randint(len(train.image_pids), (b, args.negatives - args.hard), generator=gen)], 1)
        candidates = torch.cat([positives[:, None], negatives], dim=1)
        for group in optimizer.param_groups:   # 100 steps of linear warm-up, then constant
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        with autocast(model.device, model.dtype):
            scores = reranker(train.image_states[candidates.flatten()],
                              train.text_states[queries].repeat_interleave(n, 0),
                              train.text_mask[queries].repeat_interleave(n, 0)).view(b, n)
        loss = F.cross_entropy(scores, torch.zeros(b, dtype=torch.long))   # a random negative may share the
        optimizer.zero_grad(set_to_none=True)                              # identity: rare (1 in 3,000)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
    return reranker.eval(), {"steps": step, "loss_end": round(statistics.mean(losses[-100:]), 4),
                             "loss_chance": round(float(torch.tensor(float(n)).log()), 4)}


@torch.inference_mode()
def top_scores(model, reranker: Reranker, split: Split, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cosine (Q, G), each caption's top ``k`` (Q, k) and the re-ranker's scores of them."""
    from ivt.runtime import autocast

    similarity = split.text @ split.image.T
    top = similarity.topk(k, dim=1).indices
    match = torch.empty(len(top), k)
    for start in range(0, len(top), 64):
        rows = slice(start, start + 64)
        with autocast(model.device, model.dtype):
            match[rows] = reranker(split.image_states[top[rows].flatten()],
                                   split.text_states[rows].repeat_interleave(k, 0),
                                   split.text_mask[rows].repeat_interleave(k, 0)).view(-1, k)
    return similarity, top, match


def fresh_r1(model, reranker: Reranker, split: Split, weight: float) -> dict:
    """Test-split R1 in cosine order (``"0"``) and with the top K re-ordered, fused and alone."""
    from ivt.evaluate.metrics import ranking_metrics
    from ivt.evaluate.rerank import fuse

    similarity, top, match = top_scores(model, reranker, split, max(KS))
    out = {"0": ranking_metrics(similarity, split.text_pids, split.image_pids)["R1"]}
    for k in KS:
        cosine = similarity.gather(1, top[:, :k])
        for name, order in (("fused", fuse(match[:, :k], cosine, weight)), ("alone", match[:, :k])):
            scores = similarity.clone()
            scores.scatter_(1, top[:, :k], order - order.min(dim=1, keepdim=True).values + 2.0)
            out[f"{name} {k}"] = ranking_metrics(scores, split.text_pids, split.image_pids)["R1"]
    return {key: round(value, 2) for key, value in out.items()}


def measure(args: argparse.Namespace) -> dict:
    from ivt.evaluate.rerank import CHOOSE_K, choose_weight
    from ivt.inference import load
    from rerank import data_of
    from rerank_budget import machine

    torch.manual_seed(args.seed)
    model = load(args.run, device="cpu", precision=args.precision)
    # The encoder hands out the states entering its last ``layers`` blocks (encode_*_with_states).
    model.encoder.config = dataclasses.replace(model.encoder.config, itm_layers=args.layers)
    data = data_of(args.run)
    started = time.perf_counter()
    train = Split(model, data, "train")
    cache_s = time.perf_counter() - started
    reranker, fit = train_reranker(model, train, args)
    val = Split(model, data, "val")
    similarity, top, match = top_scores(model, reranker, val, CHOOSE_K)
    weight, by_weight = choose_weight(match, similarity.gather(1, top), val.image_pids[top] == val.text_pids[:, None])
    fresh = {}
    for seed in args.fresh:
        draw = Path("data/fresh") / f"seed{seed}-400"
        fresh[draw.name] = fresh_r1(model, reranker, Split(model, draw, "test"), weight)
        print(draw.name, fresh[draw.name], flush=True)
    run_steps = json.loads((Path(args.run) / "last.state.json").read_text())["step"]
    return {"machine": machine("cpu"), "precision": args.precision, "run": str(args.run), "run_steps": run_steps,
            "seconds": args.seconds, "layers": args.layers, "negatives": args.negatives, "hard": args.hard,
            "pool": args.pool, "lr": args.lr, "seed": args.seed, "cache_s": round(cache_s, 1), **fit,
            "weight": weight, "val_R1_by_weight": {str(w): round(r, 2) for w, r in by_weight.items()}, "fresh": fresh}


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in ("machine", "run", "run_steps", "seconds", "layers", "negatives", "hard", "pool",
                                  "lr", "seed"))


def render(rows: list[dict]) -> str:
    """Mean fresh-draw R1 of every kept row: cosine, fused and head alone at each K."""
    if not rows:
        return "No rows kept yet."
    lines = ["`benchmarks/rerank_after.py`: a re-ranker trained after the retriever (the run, frozen), on "
             "hard negatives from the whole training gallery by its cosine plus random ones; fusion weight "
             "chosen on the run's validation split; mean test-split R1 over the fresh draws "
             f"({', '.join(sorted({d for r in rows for d in r['fresh']}))}). Not equal time: the re-ranker's "
             "seconds come on top of the run's.", "",
             "| machine | run (steps) | re-ranker: seconds, steps, blocks | negatives (hard of top pool) | loss end / "
             "chance | weight | R1 cosine | R1 fused K=8 / 16 / 32 | R1 head alone K=8 / 16 / 32 |",
             "|" + " --- |" * 9]
    for r in rows:
        mean = {k: statistics.mean(d[k] for d in r["fresh"].values()) for k in next(iter(r["fresh"].values()))}
        lines.append("| " + " | ".join([
            r["machine"], f"{r['run']} ({r['run_steps']:,})", f"{r['seconds']:g} s, {r['steps']:,}, {r['layers']}",
            f"{r['negatives']} ({r['hard']} of top {r['pool']})", f"{r['loss_end']:.3f} / {r['loss_chance']:.3f}",
            f"{r['weight']:g}", f"{mean['0']:.2f}", " / ".join(f"{mean[f'fused {k}']:.2f}" for k in KS),
            " / ".join(f"{mean[f'alone {k}']:.2f}" for k in KS)]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a trained dual-encoder run (e.g. runs/demo)")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=7)
    ap.add_argument("--hard", type=int, default=3)
    ap.add_argument("--pool", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003, 7004, 7005])
    ap.add_argument("--rows", type=Path, default=ROWS)
    ap.add_argument("--write", action="store_true", help="regenerate the section in benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.run:
        if not 0 <= args.hard <= args.negatives or args.hard > args.pool:
            raise SystemExit("--hard must be from 0 to --negatives and at most --pool")
        row = measure(args)
        keep_rows(args.rows, [row], row_key)
        print(render([row]), flush=True)
    if args.write:
        write_section("rerank-after", render(load_rows(args.rows)),
                      "A re-ranker trained after the retriever (`benchmarks/rerank_after.py`)")


if __name__ == "__main__":
    main()
