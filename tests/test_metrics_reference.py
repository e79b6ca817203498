"""Our ranking metrics against trec_eval (pytrec_eval) on the same ranked lists.

trec_eval conventions mapped to ours: P_k = precision@k, recall_k =
recall@k, ndcg_cut_k = ndcg@k, success_k = hit_rate@k, recip_rank on the
top-k run = mrr@k, map_cut_k = map@k (average precision over the first k
ranks divided by the number of relevant items n, not min(n, k)). Cases with
several relevant items per user, many more than k among them, so that MAP's
denominator matters; also a float64 NumPy reference of trec_eval's AP.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval

from fgjax import kernels
from fgjax.evaluation.metrics import metrics_at


def _random_case(rng, users: int, items: int, length: int, max_targets: int):
    top = np.stack([rng.permutation(items)[:length] for _ in range(users)]).astype(np.int32)
    targets = np.full((users, max_targets), -1, np.int32)
    for u in range(users):
        n = rng.integers(1, max_targets + 1)
        # Bias targets towards the head of the list so that there are hits at every rank.
        pool = np.concatenate([top[u, : length // 2], rng.permutation(items)[:n]])
        chosen = rng.choice(np.unique(pool), size=min(n, len(np.unique(pool))), replace=False)
        targets[u, : len(chosen)] = chosen
    return top, targets


def _trec(top, targets, k):
    qrels = {f"u{u}": {f"i{i}": 1 for i in row if i >= 0} for u, row in enumerate(targets)}
    # Distinct scores in rank order, so trec_eval's tie rule never applies.
    run = {f"u{u}": {f"i{i}": float(k - r) for r, i in enumerate(row[:k])} for u, row in enumerate(top)}
    measures = {f"P_{k}", f"recall_{k}", f"ndcg_cut_{k}", f"success_{k}", "recip_rank", f"map_cut_{k}"}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


def _ap_reference(ranked, relevant, k):
    """trec_eval's map_cut_k of one user in float64: sum over the first k ranks of P@j at each hit, / |relevant|."""
    ranked = np.asarray(ranked[:k])
    hits = np.isin(ranked, list(relevant)).astype(np.float64)
    precision_at = np.cumsum(hits) / np.arange(1, len(ranked) + 1, dtype=np.float64)
    return float(np.sum(precision_at * hits) / len(relevant))


@pytest.mark.parametrize("seed,k,max_targets", [(0, 10, 1), (1, 10, 5), (2, 20, 30), (3, 5, 12), (4, 10, 40)])
def test_per_user_metrics_match_trec_eval(seed, k, max_targets):
    rng = np.random.default_rng(seed)
    top, targets = _random_case(rng, users=40, items=60, length=max(k, 20), max_targets=max_targets)
    ours = {name: np.asarray(v) for name, v in kernels.ranking_metrics(top, targets, k).items()}
    trec = _trec(top, targets, k)
    for u in range(len(top)):
        t = trec[f"u{u}"]
        n = int((targets[u] >= 0).sum())
        np.testing.assert_allclose(ours["precision"][u], t[f"P_{k}"], atol=1e-6)
        np.testing.assert_allclose(ours["recall"][u], t[f"recall_{k}"], atol=1e-6)
        np.testing.assert_allclose(ours["ndcg"][u], t[f"ndcg_cut_{k}"], atol=1e-5)
        np.testing.assert_allclose(ours["hit_rate"][u], t[f"success_{k}"], atol=1e-6)
        np.testing.assert_allclose(ours["mrr"][u], t["recip_rank"], atol=1e-6)
        np.testing.assert_allclose(ours["map"][u], t[f"map_cut_{k}"], atol=1e-5)
        np.testing.assert_allclose(t[f"map_cut_{k}"], _ap_reference(top[u], set(targets[u][targets[u] >= 0]), k),
                                   atol=1e-9)
        p, r = t[f"P_{k}"], t[f"recall_{k}"]
        np.testing.assert_allclose(ours["f1"][u], 2 * p * r / (p + r) if p + r else 0.0, atol=1e-6)
    assert ours["hit_rate"].mean() > 0.3  # the case has hits at many ranks, so the check is not vacuous
    n = (targets >= 0).sum(axis=1)
    if max_targets > k:  # users with more relevant items than k and hits: where MAP / n and MAP / min(n, k) differ
        assert np.any((n > k) & (ours["map"] > 0))


def test_map_divides_by_every_relevant_item():
    # 4 relevant items, k = 2, hits at ranks 1 and 2: AP@2 = (1 + 1) / 4 (min(n, k) would give 1).
    top = np.array([[3, 5, 7, 9]])
    targets = np.array([[5, 3, 11, 12]])
    got = float(kernels.ranking_metrics(top, targets, 2)["map"][0])
    assert got == pytest.approx(0.5)
    assert got == pytest.approx(_trec(top, targets, 2)["u0"]["map_cut_2"])


def test_averages_match_trec_eval_and_skip_users_without_targets():
    rng = np.random.default_rng(7)
    top, targets = _random_case(rng, users=30, items=50, length=20, max_targets=4)
    targets[::5] = -1  # users without targets: left out of both averages
    means = metrics_at(top, targets, [10])
    has = (targets >= 0).any(axis=1)
    trec = _trec(top[has], targets[has], 10)
    np.testing.assert_allclose(means["ndcg@10"], np.mean([t["ndcg_cut_10"] for t in trec.values()]), atol=1e-5)
    np.testing.assert_allclose(means["recall@10"], np.mean([t["recall_10"] for t in trec.values()]), atol=1e-6)
    np.testing.assert_allclose(means["mrr@10"], np.mean([t["recip_rank"] for t in trec.values()]), atol=1e-6)
    np.testing.assert_allclose(means["map@10"], np.mean([t["map_cut_10"] for t in trec.values()]), atol=1e-5)
