"""Time ivt.evaluate.ranking_metrics on a CUHK-PEDES-size problem beside a plain full-argsort
implementation (IRRA's protocol), in the same run, and check that both agree.

    python benchmarks/metrics_speed.py [--queries 6156] [--gallery 3074] [--ids 1000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from ivt.evaluate.metrics import METRIC_KEYS, ranking_metrics


def argsort_metrics(similarity: torch.Tensor, qp: torch.Tensor, gp: torch.Tensor) -> dict[str, float]:
    """The reference: full stable descending argsort of every row (IRRA's `rank`)."""
    indices = torch.argsort(similarity, dim=1, descending=True, stable=True)
    matches = gp[indices].eq(qp.view(-1, 1))
    cmc = matches[:, :10].cumsum(1).clamp(max=1).float().mean(0) * 100
    num_rel = matches.sum(1)
    tmp = matches.cumsum(1).float()
    positions = torch.arange(1, matches.shape[1] + 1, dtype=torch.float32)
    ap = ((tmp / positions) * matches).sum(1) / num_rel
    last = matches.shape[1] - 1 - matches.flip(1).float().argmax(1)
    inp = num_rel.float() / (last + 1).float()
    return {"R1": float(cmc[0]), "R5": float(cmc[4]), "R10": float(cmc[9]),
            "mAP": float(ap.mean() * 100), "mINP": float(inp.mean() * 100)}


def make_problem(num_q: int, num_g: int, num_ids: int, signal: float, seed: int):
    """Random gallery ids (every id present), queries drawn from gallery ids, cosine-like scores."""
    g = torch.Generator().manual_seed(seed)
    gp = torch.cat([torch.arange(num_ids), torch.randint(0, num_ids, (num_g - num_ids,), generator=g)])
    qp = gp[torch.randint(0, num_g, (num_q,), generator=g)]
    sim = torch.randn(num_q, num_g, generator=g) * 0.1
    sim += signal * (qp.unsqueeze(1) == gp.unsqueeze(0)).float()
    return sim, qp, gp


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=6156)
    ap.add_argument("--gallery", type=int, default=3074)
    ap.add_argument("--ids", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.queries} queries x {args.gallery} gallery, {args.ids} ids, {torch.get_num_threads()} threads")
    print(f"{'scores':<18}{'ivt (s)':>10}{'argsort (s)':>13}{'max |diff|':>12}   metrics")
    for name, signal in (("random", 0.0), ("trained-like", 0.3)):
        sim, qp, gp = make_problem(args.queries, args.gallery, args.ids, signal, seed=0)
        ours = ranking_metrics(sim, qp, gp)
        ref = argsort_metrics(sim, qp, gp)
        diff = max(abs(ours[k] - ref[k]) for k in ref)
        t_ours = best_time(lambda s=sim, q=qp, g=gp: ranking_metrics(s, q, g), args.repeats)
        t_ref = best_time(lambda s=sim, q=qp, g=gp: argsort_metrics(s, q, g), args.repeats)
        shown = " ".join(f"{k}={ours[k]:.2f}" for k in METRIC_KEYS)
        print(f"{name:<18}{t_ours:>10.3f}{t_ref:>13.3f}{diff:>12.2e}   {shown}")


if __name__ == "__main__":
    main()
