"""Full-catalog top-K (with exclusions and forgetting weights) against NumPy."""

import numpy as np
import pytest

from fgjax.config import ModelConfig
from fgjax.data.split import ItemSets
from fgjax.models import build_model, split_params
from fgjax.ranking.strategy import ForgettingWeights
from fgjax.ranking.topk import rank_items

from test_models_mlp import numpy_forward


@pytest.mark.parametrize("chunk", [4, 512])
def test_rank_items_matches_numpy(chunk):
    num_users, num_items, K = 10, 23, 3
    model = build_model(ModelConfig(embed_dim=8, hidden_dim=8), num_users, num_items, seed=2)
    graphdef, params = split_params(model)
    rng = np.random.default_rng(0)
    users = np.array([9, 0, 4, 4, 7, 1, 2])
    seen = ItemSets.from_pairs(rng.integers(0, num_users, 40), rng.integers(0, num_items, 40), num_users)
    weights = ForgettingWeights(
        user_interest=rng.uniform(0, 1, (num_users, K + 1)).astype(np.float32),
        item_interest=np.where(np.arange(num_items) % 5 == 0, -1, np.arange(num_items) % K).astype(np.int32),
        item_weight=rng.uniform(0.5, 2, num_items).astype(np.float32),
    )
    uu, ii = np.meshgrid(users, np.arange(num_items), indexing="ij")
    relevance = 1 / (1 + np.exp(-numpy_forward(params, uu, ii)))
    interest = weights.item_interest
    # Items without an interest (-1) take the last column.
    m = weights.user_interest[users][:, np.where(interest >= 0, interest, K)]
    expected = relevance * m * weights.item_weight[None, :]
    for r, u in enumerate(users):
        expected[r, seen.items[seen.indptr[u] : seen.indptr[u + 1]]] = -np.inf
    scores, items = rank_items(graphdef, params, users, k=5, num_items=num_items, seen=seen, forgetting=weights,
                               chunk=chunk)
    np.testing.assert_array_equal(items, np.argsort(-expected, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.take_along_axis(expected, items, 1), rtol=1e-5)
    for r, u in enumerate(users):
        assert not set(items[r]) & set(seen.items[seen.indptr[u] : seen.indptr[u + 1]].tolist())


def test_rank_items_without_forgetting_orders_by_the_model():
    model = build_model(ModelConfig(embed_dim=4, hidden_dim=4), 3, 9, seed=0)
    graphdef, params = split_params(model)
    uu, ii = np.meshgrid(np.arange(3), np.arange(9), indexing="ij")
    logits = numpy_forward(params, uu, ii)
    _, items = rank_items(graphdef, params, np.arange(3), k=9, num_items=9)
    np.testing.assert_array_equal(items, np.argsort(-logits, axis=1, kind="stable"))
    empty_scores, empty_items = rank_items(graphdef, params, np.array([], np.int32), k=4, num_items=9)
    assert empty_items.shape == (0, 4)


def test_memory_budget_shrinks_chunks_without_changing_results(monkeypatch):
    import fgjax.ranking.topk as scoring

    model = build_model(ModelConfig(embed_dim=4, hidden_dim=16), 40, 300, seed=5)
    graphdef, params = split_params(model)
    users = np.arange(40)
    chunks = []
    real = scoring._chunk_top_k
    monkeypatch.setattr(scoring, "_chunk_top_k", lambda *a, **kw: chunks.append(a[4].shape[0]) or real(*a, **kw))
    wide = rank_items(graphdef, params, users, k=7, num_items=300, chunk=64)
    assert chunks == [64]
    # 300 items x 16 hidden x 4 B = 19 KB a user: a 1 MB budget allows 32 users a call.
    chunks.clear()
    narrow = rank_items(graphdef, params, users, k=7, num_items=300, chunk=64, memory_budget_mb=1)
    assert chunks == [32, 32]
    np.testing.assert_array_equal(wide[1], narrow[1])
    np.testing.assert_allclose(wide[0], narrow[0], rtol=1e-6)


@pytest.mark.parametrize("block", [128, 2048])
def test_blocked_selection_matches_numpy_on_a_larger_catalog(monkeypatch, block):
    """Catalog > k * group size: the group-max path (several item blocks) against the full NumPy ranking."""
    import fgjax.ranking.topk as scoring

    monkeypatch.setattr(scoring, "SCORE_BLOCK_ITEMS", block)
    num_users, num_items, K = 12, 700 + block // 128, 4  # distinct shapes: a fresh trace per block size
    model = build_model(ModelConfig(embed_dim=8, hidden_dim=8), num_users, num_items, seed=4)
    graphdef, params = split_params(model)
    rng = np.random.default_rng(1)
    users = np.arange(num_users)
    seen = ItemSets.from_pairs(rng.integers(0, num_users, 600), rng.integers(0, num_items, 600), num_users)
    weights = ForgettingWeights(
        user_interest=rng.uniform(0, 1, (num_users, K + 1)).astype(np.float32),
        item_interest=np.where(np.arange(num_items) % 7 == 0, -1, np.arange(num_items) % K).astype(np.int32),
        item_weight=rng.uniform(0.5, 2, num_items).astype(np.float32),
    )
    uu, ii = np.meshgrid(users, np.arange(num_items), indexing="ij")
    relevance = 1 / (1 + np.exp(-numpy_forward(params, uu, ii)))
    interest = weights.item_interest
    expected = relevance * weights.user_interest[users][:, np.where(interest >= 0, interest, K)] * weights.item_weight
    for u in users:
        expected[u, seen.items[seen.indptr[u] : seen.indptr[u + 1]]] = -np.inf
    scores, items = rank_items(graphdef, params, users, k=10, num_items=num_items, seen=seen, forgetting=weights)
    np.testing.assert_array_equal(items, np.argsort(-expected, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(expected, items, 1), rtol=1e-5)
