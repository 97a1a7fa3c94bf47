"""Find this person's ranking (ivt.index.same_person): camera means, camera centring, and
k-reciprocal re-ranking against the authors' formulation."""
from __future__ import annotations

import numpy as np
import pytest

from ivt.index.same_person import NO_CAMERA, CameraMeans, SamePersonSettings, k_reciprocal_distance, same_person_order


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _authors_re_ranking(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int, k2: int,
                        lambda_value: float) -> np.ndarray:
    """Zhong et al.'s re_ranking (person-re-ranking, python-version) as published, over Euclidean
    distance matrices: query x gallery final distances."""
    original_dist = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    query_num = q_g.shape[0]
    all_num = q_g.shape[0] + q_g.shape[1]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            half = int(np.around(k1 / 2.0))
            candidate_forward_k_neigh_index = initial_rank[candidate, :half + 1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index, :half + 1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > \
                    2.0 / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V = np.stack([np.mean(V[initial_rank[i, :k2], :], axis=0) for i in range(all_num)])
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num])
        ind_non_zero = np.where(V[i, :] != 0)[0]
        ind_images = [inv_index[ind] for ind in ind_non_zero]
        for j in range(len(ind_non_zero)):
            temp_min[0, ind_images[j]] += np.minimum(V[i, ind_non_zero[j]], V[ind_images[j], ind_non_zero[j]])
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


@pytest.mark.parametrize("k1, k2, lam, seed", [(4, 3, 0.6, 0), (3, 1, 0.3, 1), (6, 2, 0.0, 2), (20, 6, 0.3, 3)])
def test_k_reciprocal_distance_is_the_authors(k1, k2, lam, seed):
    # Clustered points (people seen several times), so reciprocal sets and their expansions are non-trivial.
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 16))
    x = _unit(centres[rng.integers(0, 8, size=41)] + 0.5 * rng.normal(size=(41, 16)))
    euclid = np.sqrt(np.maximum(2.0 - 2.0 * (x @ x.T), 0.0))
    expected = _authors_re_ranking(euclid[:1, 1:], euclid[:1, :1], euclid[1:, 1:], k1, k2, lam)[0]
    got = k_reciprocal_distance(x, k1, k2, lam)
    np.testing.assert_allclose(got[1:], expected, atol=1e-9)
    assert got.shape == (41,) and got[0] == pytest.approx((1 - lam) * 0.0 + 0.0, abs=1e-9)


def test_camera_means_and_centring():
    rng = np.random.default_rng(0)
    x = _unit(rng.normal(size=(9, 5))).astype(np.float32)
    cameras = ["a", "a", "b", NO_CAMERA, "b", "a", NO_CAMERA, "b", "b"]
    means = CameraMeans.of(x, cameras)
    assert set(means.means) == {"a", "b", NO_CAMERA}
    np.testing.assert_allclose(means.means["b"], x[[2, 4, 7, 8]].mean(0), atol=1e-6)
    np.testing.assert_allclose(means.overall, x.mean(0), atol=1e-6)
    sums = {c: x[[i for i, k in enumerate(cameras) if k == c]].sum(0) for c in means.means}
    counts = {c: cameras.count(c) for c in means.means}
    batched = CameraMeans.from_sums(sums, counts)
    for c in means.means:
        np.testing.assert_allclose(batched.means[c], means.means[c], atol=1e-6)
    np.testing.assert_allclose(batched.overall, means.overall, atol=1e-6)
    z = means.centred(x[:3], ["a", None, "elsewhere"])      # unknown camera and no camera: the overall mean
    expected = _unit(np.stack([x[0] - means.means["a"], x[1] - means.overall, x[2] - means.overall]))
    np.testing.assert_allclose(z, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-6)


def test_centring_finds_the_person_a_camera_hides():
    """Ten people, each seen once by two cameras whose colour casts dominate the embeddings: by
    cosine, the nearest image to someone is a stranger under the same camera; minus each camera's
    mean, it is the same person under the other."""
    rng = np.random.default_rng(1)
    people = rng.normal(size=(10, 32))
    cast = 4.0 * rng.normal(size=(2, 32))
    x = _unit(np.concatenate([people + cast[0], people + cast[1]]) + 0.1 * rng.normal(size=(20, 32)))
    cameras = ["east"] * 10 + ["west"] * 10
    pids = np.arange(20) % 10

    def top1_right(vectors: np.ndarray, settings: SamePersonSettings) -> float:
        right = 0
        for i in range(20):
            others = np.delete(np.arange(20), i)
            order, _ = same_person_order(vectors[i], vectors[others], settings)
            right += int(pids[others[order[0]]] == pids[i])
        return right / 20

    plain = SamePersonSettings(candidates=0)
    assert top1_right(x, plain) <= 0.2
    assert top1_right(CameraMeans.of(x, cameras).centred(x, cameras), plain) == 1.0


def test_re_ranking_reorders_only_the_candidates():
    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(60, 8)))
    q = x[0]
    order, scores = same_person_order(q, x[1:], SamePersonSettings(candidates=0))
    np.testing.assert_allclose(scores, x[1:] @ q, atol=1e-6)
    assert order.tolist() == np.argsort(-(x[1:] @ q), kind="stable").tolist()
    settings = SamePersonSettings(candidates=12)
    reranked, _ = same_person_order(q, x[1:], settings)
    assert sorted(reranked[:12].tolist()) == sorted(order[:12].tolist())
    assert reranked[12:].tolist() == order[12:].tolist()
    distance = k_reciprocal_distance(np.vstack([q, x[1:][order[:12]]]), settings.k1, settings.k2, settings.lam)[1:]
    assert reranked[:12].tolist() == order[:12][np.argsort(distance, kind="stable")].tolist()
    assert reranked[:12].tolist() != order[:12].tolist()             # it did re-order (random points)
    one, _ = same_person_order(q, x[1:2], settings)                   # a single candidate: nothing to re-rank
    assert one.tolist() == [0]
