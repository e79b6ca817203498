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


def test_chunks_with_different_seen_sets_compile_once():
    """Users whose seen sets differ in size chunk by chunk (1 item vs 9): one seen width, one compilation."""
    from fgjax.ranking.topk import _chunk_top_k

    num_users, num_items = 8, 31
    model = build_model(ModelConfig(embed_dim=4, hidden_dim=4), num_users, num_items, seed=3)
    graphdef, params = split_params(model)
    user = np.concatenate([np.repeat([0, 1, 2, 3], 1), np.repeat([4, 5, 6, 7], 9)])
    item = np.concatenate([np.arange(4), np.arange(36) % num_items])
    seen = ItemSets.from_pairs(user, item, num_users)
    before = _chunk_top_k._cache_size()
    _, items = rank_items(graphdef, params, np.arange(num_users), k=3, num_items=num_items, seen=seen, chunk=4)
    assert _chunk_top_k._cache_size() - before == 1
    for u in range(num_users):
        assert not set(items[u]) & set(seen.items[seen.indptr[u] : seen.indptr[u + 1]].tolist())


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


@pytest.mark.parametrize("block", [128, 2048])
def test_rank_items_for_the_sequence_model_matches_a_float64_softmax(monkeypatch, block):
    """Softmax relevance over the whole catalog (normalizer from the blocked pass) x m(u, k(i)) x w_i, seen masked."""
    import dataclasses

    import jax.numpy as jnp
    from flax import nnx

    import fgjax.ranking.topk as scoring
    from fgjax.config import Config, SequenceConfig
    from fgjax.data.sequences import build_sequences

    monkeypatch.setattr(scoring, "SCORE_BLOCK_ITEMS", block)
    num_users, num_items, K = 9, 300 + block // 128, 3  # several item blocks at block 128
    config = dataclasses.replace(Config(), model=ModelConfig(name="time_sasrec"),
                                 sequence=SequenceConfig(max_len=5, dim=8, heads=2, layers=1, dropout=0.0))
    graphdef, params = split_params(build_model(config, num_users, num_items, seed=1))
    rng = np.random.default_rng(2)
    user = np.repeat(np.arange(num_users), 7)
    item = rng.integers(0, num_items, len(user))
    ts = 1.7e9 + rng.uniform(0, 1e6, len(user))
    sequences = build_sequences(user, item, ts, num_users)
    seen = ItemSets.from_pairs(user, item, num_users)
    weights = ForgettingWeights(
        user_interest=rng.uniform(0, 1, (num_users, K + 1)).astype(np.float32),
        item_interest=np.where(np.arange(num_items) % 4 == 0, -1, np.arange(num_items) % K).astype(np.int32),
        item_weight=rng.uniform(0.5, 2, num_items).astype(np.float32),
    )
    users = np.array([8, 0, 3, 3, 5])
    inputs = scoring.query_inputs(graphdef, params, users, sequences, num_items=num_items)
    assert inputs["items"].shape == (5, 5) and inputs["times"].dtype == np.float32
    model = nnx.merge(graphdef, params)
    query = np.asarray(model.query({k: jnp.asarray(v) for k, v in inputs.items()}), np.float64)
    logits = query @ np.asarray(model.item_rows(), np.float64).T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    interest = weights.item_interest
    expected = probs * weights.user_interest[users][:, np.where(interest >= 0, interest, K)] * weights.item_weight
    for r, u in enumerate(users):
        expected[r, seen.items[seen.indptr[u] : seen.indptr[u + 1]]] = -np.inf
    scores, items = rank_items(graphdef, params, users, k=8, num_items=num_items, inputs=inputs, seen=seen,
                               forgetting=weights)
    np.testing.assert_array_equal(items, np.argsort(-expected, axis=1, kind="stable")[:, :8])
    np.testing.assert_allclose(scores, np.take_along_axis(expected, items, 1), rtol=2e-5)
    # Without forgetting and masks the scores are the next-item probabilities themselves.
    plain, top = rank_items(graphdef, params, users, k=num_items, num_items=num_items, inputs=inputs)
    np.testing.assert_allclose(plain.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(plain, np.take_along_axis(probs, top, 1), rtol=2e-5, atol=1e-9)


def test_item_columns_send_items_without_an_interest_to_column_k():
    from fgjax.ranking.strategy import item_columns

    np.testing.assert_array_equal(item_columns(np.array([2, -1, 0, 1, -1]), 3), [2, 3, 0, 1, 3])
