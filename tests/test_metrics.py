"""ranking_metrics against the IRRA reference fixtures and a plain full-argsort implementation."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import read_fixture_json
from ivt.evaluate import ranking_metrics


def argsort_reference(sim: torch.Tensor, qp: torch.Tensor, gp: torch.Tensor, k_max: int = 10) -> dict:
    """Straightforward per-query computation with a full sort (no ties in the inputs)."""
    out = {"R1": 0.0, "R5": 0.0, "R10": 0.0, "mAP": 0.0, "mINP": 0.0}
    for i in range(sim.shape[0]):
        order = torch.argsort(sim[i], descending=True)
        match = (gp[order] == qp[i]).numpy()
        ranks = np.nonzero(match)[0] + 1
        for k in (1, 5, 10):
            out[f"R{k}"] += float(ranks[0] <= k)
        out["mAP"] += float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        out["mINP"] += len(ranks) / ranks[-1]
    return {k: 100 * v / sim.shape[0] for k, v in out.items()}


def test_matches_irra_fixture_cases():
    cases = read_fixture_json("ranking_metric_cases.json")["cases"]
    assert len(cases) >= 4
    for case in cases:
        got = ranking_metrics(case["similarity"], case["query_pids"], case["gallery_pids"])
        for key, want in case["expected"].items():
            assert got[key] == pytest.approx(want, abs=1e-3), key
        assert got["num_queries"] == len(case["query_pids"])
        assert got["num_gallery"] == len(case["gallery_pids"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_argsort_reference_on_random_problems(seed):
    g = torch.Generator().manual_seed(seed)
    gp = torch.cat([torch.arange(40), torch.randint(0, 40, (80,), generator=g)])
    qp = gp[torch.randint(0, 120, (200,), generator=g)]
    sim = torch.randn(200, 120, generator=g) + 1.5 * (qp[:, None] == gp[None]).float()
    got = ranking_metrics(sim, qp, gp, chunk_size=7)
    want = argsort_reference(sim, qp, gp)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_chunk_size_does_not_change_results():
    g = torch.Generator().manual_seed(5)
    gp = torch.randint(0, 30, (90,), generator=g)
    qp = torch.cat([gp[torch.randint(0, 90, (150,), generator=g)], torch.tensor([1000])])
    sim = torch.randn(151, 90, generator=g)
    with pytest.warns(UserWarning):
        a = ranking_metrics(sim, qp, gp, chunk_size=1)
    with pytest.warns(UserWarning):
        b = ranking_metrics(sim, qp, gp, chunk_size=10_000)
    assert a == pytest.approx(b, rel=1e-12)


def test_hand_computed_example():
    # Query 0 (pid 1): order g2(1) g0(2) g1(1) -> ranks 1, 3. AP = (1/1 + 2/3)/2, INP = 2/3.
    # Query 1 (pid 2): order g2(1) g0(2) g1(1) -> rank 2.   AP = 1/2,          INP = 1/2.
    sim = [[0.5, 0.1, 0.9], [0.5, 0.1, 0.9]]
    m = ranking_metrics(sim, [1, 2], [2, 1, 1])
    assert m["R1"] == pytest.approx(50.0)
    assert m["R5"] == pytest.approx(100.0)
    assert m["mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.5) / 2)
    assert m["mINP"] == pytest.approx(100 * (2 / 3 + 0.5) / 2)


def test_gallery_smaller_than_k_clips_k():
    sim = [[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]]
    with pytest.warns(UserWarning):
        m = ranking_metrics(sim, [7, 8], [9, 9, 7])
    # Query pid 7 is last (rank 3); query pid 8 has no match -> excluded.
    assert m["R1"] == 0.0 and m["R5"] == 100.0 and m["R10"] == 100.0
    assert m["num_skipped_queries"] == 1


def test_queries_without_relevant_image_are_excluded_with_warning():
    sim = [[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]]
    with pytest.warns(UserWarning, match="1 of 3 queries"):
        m = ranking_metrics(sim, [1, 2, 99], [1, 2])
    assert m["R1"] == 100.0 and m["mAP"] == 100.0
    assert m["num_skipped_queries"] == 1


def test_no_relevant_at_all_is_an_error():
    with pytest.raises(ValueError, match="no query has a relevant"):
        ranking_metrics([[0.1, 0.2]], [5], [1, 2])


def test_ties_are_pessimistic():
    # All scores equal: the relevant image ranks after every non-relevant one.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = ranking_metrics(np.zeros((2, 4)), [3, 3], [1, 2, 3, 4])
    assert m["R1"] == 0.0 and m["mINP"] == pytest.approx(100 / 4)


@pytest.mark.parametrize(
    "args, message",
    [
        (([[0.1, 0.2]], [1, 2], [1, 2]), "2 query pids"),
        (([0.1, 0.2], [1], [1, 2]), "2-D"),
        (([[float("nan"), 0.2]], [1], [1, 2]), "NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(*args)
