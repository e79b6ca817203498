"""fgjax.kernels._metrics against a float64 per-user Python reference."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax.kernels import METRIC_NAMES, hit_matrix, mean_metrics, ranking_metrics

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
metrics_jit = jax.jit(ranking_metrics, static_argnums=2)
RTOL = 1e-5
ATOL = 1e-6


def ref_metrics(top_items, targets, k):
    """Binary relevance, n = number of distinct targets, list cut at k."""
    top_items = np.asarray(top_items)
    targets = np.asarray(targets)
    out = {name: np.zeros(len(top_items)) for name in METRIC_NAMES}
    for u in range(len(top_items)):
        relevant = {int(t) for t in targets[u] if t >= 0}
        n = len(relevant)
        if n == 0:
            continue
        ranked = [int(i) for i in top_items[u][:k]]
        hits = [1.0 if i in relevant else 0.0 for i in ranked]
        h = sum(hits)
        p = h / k
        r = h / n
        out["precision"][u] = p
        out["recall"][u] = r
        out["f1"][u] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        dcg = sum(hit / math.log2(j + 2) for j, hit in enumerate(hits))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(n, k)))
        out["ndcg"][u] = dcg / idcg
        out["hit_rate"][u] = 1.0 if h > 0 else 0.0
        first = next((j for j, hit in enumerate(hits) if hit), None)
        out["mrr"][u] = 0.0 if first is None else 1.0 / (first + 1)
        ap, seen = 0.0, 0
        for j, hit in enumerate(hits):
            if hit:
                seen += 1
                ap += seen / (j + 1)
        out["map"][u] = ap / n  # trec_eval's map_cut_k: divided by all relevant items
    return out


def ref_mean(per_user, targets):
    has = (np.asarray(targets) >= 0).any(-1)
    return {name: (float(v[has].mean()) if has.any() else 0.0) for name, v in per_user.items()}


def random_case(rng, users, items, k, max_targets, wide=0):
    top = np.stack([rng.permutation(items)[: k + wide] for _ in range(users)]).astype(np.int32)
    targets = np.full((users, max_targets), -1, np.int32)
    for u in range(users):
        n = rng.integers(0, max_targets + 1)  # some users have no targets
        chosen = rng.choice(items, n, replace=False)
        # Pad at random positions, not only at the end.
        pos = rng.choice(max_targets, n, replace=False)
        targets[u, pos] = chosen
    return top, targets


def _assert_metrics(got, want):
    assert set(got) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_hand_computed():
    # User 0: ranked [3, 1, 2, 0], targets {1, 0}, k = 3: one hit at rank 2.
    # User 1: ranked [5, 6, 7, 8], targets {5, 7, 9}: hits at ranks 1 and 3.
    # User 2: no targets.
    top = jnp.array([[3, 1, 2, 0], [5, 6, 7, 8], [0, 1, 2, 3]])
    targets = jnp.array([[1, -1, 0], [9, 5, 7], [-1, -1, -1]])
    got = ranking_metrics(top, targets, 3)
    l3 = 1 / math.log2(3)
    l4 = 1 / math.log2(4)
    want = {
        "precision": [1 / 3, 2 / 3, 0.0],
        "recall": [1 / 2, 2 / 3, 0.0],
        "f1": [0.4, 2 / 3, 0.0],
        "ndcg": [l3 / (1 + l3), (1 + l4) / (1 + l3 + l4), 0.0],
        "hit_rate": [1.0, 1.0, 0.0],
        "mrr": [0.5, 1.0, 0.0],
        "map": [(1 / 2) / 2, (1 + 2 / 3) / 3, 0.0],
    }
    _assert_metrics(got, want)
    _assert_metrics(got, ref_metrics(top, targets, 3))
    np.testing.assert_array_equal(
        hit_matrix(top[:, :3], targets), [[False, True, False], [True, False, True], [False, False, False]]
    )
    means = mean_metrics(got, targets)
    for name in METRIC_NAMES:  # user 2 (no targets) is left out
        assert float(means[name]) == pytest.approx(np.mean(want[name][:2]), rel=1e-6), name


def test_perfect_and_empty_lists():
    top = jnp.array([[4, 2, 7, 1]])
    perfect = metrics_jit(top, jnp.array([[2, 4]]), 2)
    for name in METRIC_NAMES:
        assert float(perfect[name][0]) == pytest.approx(1.0), name
    miss = metrics_jit(top, jnp.array([[9, -1]]), 4)
    for name in METRIC_NAMES:
        assert float(miss[name][0]) == 0.0, name
    # More targets than k: recall and MAP (trec_eval: divided by n) are bounded by k/n; NDCG can reach 1.
    many = metrics_jit(top, jnp.array([[4, 2, 7, 1, 9, 8]]), 4)
    assert float(many["recall"][0]) == pytest.approx(4 / 6)
    assert float(many["ndcg"][0]) == pytest.approx(1.0)
    assert float(many["map"][0]) == pytest.approx(4 / 6)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_matches_reference_random(k):
    rng = np.random.default_rng(k)
    top, targets = random_case(rng, users=40, items=30, k=k, max_targets=6, wide=3)
    want = ref_metrics(top, targets, k)
    _assert_metrics(metrics_jit(top, targets, k), want)
    got_mean = jax.jit(lambda t, g: mean_metrics(ranking_metrics(t, g, k), g))(top, targets)
    for name, value in ref_mean(want, targets).items():
        assert float(got_mean[name]) == pytest.approx(value, rel=1e-5, abs=1e-7), name
    hm = np.asarray(hit_matrix(top[:, :k], targets))
    want_hm = np.array([[int(i) in set(targets[u][targets[u] >= 0].tolist()) for i in top[u, :k]] for u in range(len(top))])
    np.testing.assert_array_equal(hm, want_hm)


@pytest.mark.parametrize("batch", [(3,), (2, 2)])
def test_vmap_over_leading_batch(batch):
    # e.g. several evaluation runs (or model variants) at once.
    rng = np.random.default_rng(len(batch))
    k = 4
    cases = [random_case(rng, users=6, items=12, k=k, max_targets=3) for _ in range(int(np.prod(batch)))]
    top = np.stack([c[0] for c in cases]).reshape(batch + (6, k))
    targets = np.stack([c[1] for c in cases]).reshape(batch + (6, 3))
    fn = lambda t, g: ranking_metrics(t, g, k)  # noqa: E731
    for _ in batch:
        fn = jax.vmap(fn)
    got = jax.jit(fn)(top, targets)
    for i, (t, g) in enumerate(cases):
        want = ref_metrics(t, g, k)
        for name in METRIC_NAMES:
            np.testing.assert_allclose(np.asarray(got[name]).reshape(-1, 6)[i], want[name], rtol=RTOL, atol=ATOL)


def test_no_users_with_targets():
    top = jnp.array([[0, 1], [1, 0]])
    targets = jnp.full((2, 2), -1)
    per_user = metrics_jit(top, targets, 2)
    means = jax.jit(mean_metrics)(per_user, targets)
    for name in METRIC_NAMES:
        assert float(means[name]) == 0.0
        assert not np.isnan(np.asarray(per_user[name])).any()


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from([1, 3, 8]),
    st.sampled_from([1, 4]),
)
def test_property_bounds_and_reference(seed, k, max_targets):
    rng = np.random.default_rng(seed)
    top, targets = random_case(rng, users=12, items=10, k=k, max_targets=max_targets)
    got = {name: np.asarray(v) for name, v in metrics_jit(top, targets, k).items()}
    for name, v in got.items():
        assert np.all((v >= 0) & (v <= 1 + 1e-6)), name
    _assert_metrics(got, ref_metrics(top, targets, k))
    n = (targets >= 0).sum(-1)
    one = n == 1
    # One target per user: recall is exactly the hit rate; precision is hit/k.
    np.testing.assert_array_equal(got["recall"][one], got["hit_rate"][one])
    np.testing.assert_allclose(got["precision"][one], got["hit_rate"][one] / k, rtol=1e-6)
    # Always: MRR <= HitRate, and NDCG > 0 iff there is a hit.
    assert np.all(got["mrr"] <= got["hit_rate"])
    np.testing.assert_array_equal(got["ndcg"] > 0, got["hit_rate"] > 0)


def test_lists_shorter_than_k_count_missing_ranks_as_misses():
    """A catalog of 3 items evaluated at k=5: the same as the list padded with misses."""
    top = np.array([[2, 0, 1], [1, 2, 0]])
    targets = np.array([[0, -1], [0, 1]])
    short = {k: np.asarray(v) for k, v in ranking_metrics(top, targets, 5).items()}
    padded = {k: np.asarray(v) for k, v in ranking_metrics(np.pad(top, ((0, 0), (0, 2)), constant_values=-1), targets, 5).items()}
    for name in short:
        np.testing.assert_allclose(short[name], padded[name], rtol=1e-6)
    np.testing.assert_allclose(short["precision"], [1 / 5, 2 / 5])
    np.testing.assert_allclose(short["recall"], [1.0, 1.0])
    # user 1: hits at ranks 1 and 3 of 2 targets
    np.testing.assert_allclose(short["ndcg"], [1 / np.log2(3), (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))], rtol=1e-6)
