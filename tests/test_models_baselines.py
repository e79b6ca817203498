"""The baselines (BPR-MF, ItemKNN) against float64 NumPy references on tiny cases, and through the one loop."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fgjax.config import load_config
from fgjax.data.sequences import build_sequences
from fgjax.data.split import leave_last_out
from fgjax.errors import CheckpointError
from fgjax.models import BPRMF, ItemKNN, build_model, split_params
from fgjax.models.baselines import cosine_neighbors
from fgjax.ranking.topk import query_inputs, rank_items
from fgjax.training.loop import train


# ------------------------------------------------------------------ BPR-MF


def test_bpr_loss_and_scores_match_numpy():
    model = BPRMF(5, 9, dim=4, negatives=3, l2=0.01, rngs=nnx.Rngs(0))
    _, params = split_params(model)
    U = np.asarray(params["user_embed"]["embedding"], np.float64)
    V = np.asarray(params["item_embed"]["embedding"], np.float64)
    users, items = np.array([0, 4, 2, 2]), np.array([8, 1, 3, 0])
    key = jax.random.key(3)
    got = float(model.loss({"user": jnp.asarray(users), "item": jnp.asarray(items)}, key))
    negs = np.asarray(jax.random.randint(key, (4, 3), 0, 9, dtype=jnp.int32))  # the loss's own draw
    margin = np.sum(U[users] * V[items], -1)[:, None] - np.einsum("bd,bnd->bn", U[users], V[negs])
    want = np.mean(np.log1p(np.exp(-margin)))  # -log sigmoid
    want += 0.01 * (np.mean(np.sum(U[users] ** 2, -1)) + np.mean(np.sum(V[items] ** 2, -1))
                    + np.mean(np.sum(V[negs] ** 2, -1)))
    assert got == pytest.approx(want, rel=1e-5)
    # Scores through the interface are the dot products, for shared and per-user rows.
    q = model.query({"user": jnp.arange(5)})
    np.testing.assert_allclose(np.asarray(model.score(q, model.item_rows()[None])), U @ V.T, rtol=1e-5, atol=1e-6)
    rows = model.item_rows()[jnp.array([[1, 2], [3, 4], [0, 0], [8, 7], [5, 6]])]
    np.testing.assert_allclose(np.asarray(model.score(q, rows)),
                               np.take_along_axis(U @ V.T, np.array([[1, 2], [3, 4], [0, 0], [8, 7], [5, 6]]), 1),
                               rtol=1e-5, atol=1e-6)


def test_bpr_trains_in_the_one_loop_and_learns(tmp_path, small_log):
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    config = load_config(None, ["model.name=bpr", "bpr.dim=8", "bpr.epochs=6", "bpr.batch_size=64",
                                "bpr.learning_rate=0.05", "bpr.negatives=2", "bpr.patience=0"])
    result = train(config, small_log, split, tmp_path / "ck", progress=False)
    assert np.mean(result.step_losses[-5:]) < 0.8 * np.mean(result.step_losses[:5])
    assert len(result.history) == 6 and "val_ndcg@10" in result.history[-1] and result.best_epoch >= 1
    # Each user prefers one category (conftest): its items outscore the others.
    model = nnx.merge(result.graphdef, result.params)
    scores = np.asarray(model.score(model.query({"user": jnp.arange(small_log.num_users)}), model.item_rows()[None]))
    own = small_log.item_category[None, :] == (np.arange(small_log.num_users) % 4)[:, None]
    assert scores[own].mean() > scores[~own].mean() + 1.0


# ------------------------------------------------------------------ ItemKNN


def reference_neighbors(users, items, num_users, num_items, k, shrink=0.0):
    """float64 cosine over binary user sets; per item its k most similar (ties to the lower index), zeros dropped."""
    R = np.zeros((num_users, num_items))
    R[users, items] = 1.0
    co = R.T @ R
    norms = np.sqrt(R.sum(0))
    denominator = norms[:, None] * norms[None, :] + shrink
    sim = np.divide(co, denominator, out=np.zeros_like(co), where=denominator > 0)
    np.fill_diagonal(sim, 0.0)
    W = np.zeros_like(sim)  # W[i, j]: candidate i's weight on history item j
    for i in range(num_items):
        order = np.argsort(-sim[i], kind="stable")[:k]
        order = order[sim[i, order] > 0]
        W[i, order] = sim[i, order]
    return W


def _tiny_pairs():
    # 6 users, 7 items (item 6 never had): overlaps chosen so that similarities differ.
    pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 1), (2, 2), (2, 3), (3, 3), (3, 4), (4, 0), (4, 4), (4, 5),
             (5, 5), (5, 1), (5, 0), (0, 0)]  # a repeat counts once
    users, items = np.array(pairs).T
    return users, items


@pytest.mark.parametrize("k,shrink", [(6, 0.0), (2, 0.0), (3, 1.5)])
def test_itemknn_neighbours_match_numpy(k, shrink):
    users, items = _tiny_pairs()
    neighbors, weights = cosine_neighbors(users, items, 6, 7, k, shrink=shrink, block=3)  # blocks + a padded one
    W = np.zeros((7, 8))
    np.put_along_axis(W, neighbors, weights, axis=1)
    want = reference_neighbors(users, items, 6, 7, k, shrink)
    np.testing.assert_allclose(W[:, :7], want, rtol=1e-6, atol=1e-7)
    assert np.all(np.diff(weights, axis=1) <= 0)  # most similar first
    assert np.all(neighbors[6] == 7) and np.all(weights[6] == 0)  # an item nobody had has no neighbours


@pytest.mark.parametrize("history", [0, 2])
def test_itemknn_scores_match_numpy(history):
    users, items = _tiny_pairs()
    model = ItemKNN(7, neighbors=2, history=history)
    model.fit({"user": users, "item": items}, 6)
    W = reference_neighbors(users, items, 6, 7, 2)
    # Left-padded with 7, most recent last (the layout of Sequences.last).
    hist = np.array([[7, 7, 7, 7, 7, 7, 0], [7, 7, 7, 7, 2, 5, 3], [4, 1, 0, 6, 3, 2, 5]])
    H = np.zeros((3, 7))
    for row, r in enumerate(hist):
        used = r[r != 7]
        H[row, used[-history:] if history else used] = 1.0
    want = H @ W.T
    query = model.query({"items": jnp.asarray(hist)})
    got = model.score(query, model.item_rows()[None])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    # Per-user candidate rows (as the ranking's second pass asks) give the same scores.
    ids = np.array([[1, 6], [0, 0], [5, 2]])
    per_user = model.score(query, model.item_rows()[jnp.asarray(ids)])
    np.testing.assert_allclose(np.asarray(per_user), np.take_along_axis(want, ids, 1), rtol=1e-6, atol=1e-7)


def test_itemknn_fits_in_the_one_loop_ranks_and_resumes(tmp_path, small_log):
    log = small_log
    split = leave_last_out(log.user, log.item, log.timestamp, log.num_users)
    config = load_config(None, ["model.name=itemknn", "knn.neighbors=5", "knn.history=3"])
    result = train(config, log, split, tmp_path / "ck", metrics_path=tmp_path / "m.jsonl", progress=False)
    assert result.epochs == 1 and result.best_epoch == 1 and result.steps == 1 and result.resumed_from is None
    assert 0 < result.history[0]["val_ndcg@10"] <= 1 and (tmp_path / "m.jsonl").read_text().count("\n") == 1
    # Its neighbours are the training pairs' cosine neighbours.
    train_users, train_items = split.train_pairs()
    W = reference_neighbors(train_users, train_items, log.num_users, log.num_items, 5)
    got = np.zeros((log.num_items, log.num_items + 1))
    np.put_along_axis(got, np.asarray(result.params["neighbors"]), np.asarray(result.params["weights"]), axis=1)
    np.testing.assert_allclose(got[:, : log.num_items], W, rtol=1e-5, atol=1e-6)
    # Ranking (full catalog, history masked) equals the NumPy scores from each user's last 3 items before the test.
    history = build_sequences(log.user, log.item, log.timestamp, log.num_users, split.history_events)
    users = np.flatnonzero(split.test_target >= 0)
    inputs = query_inputs(result.graphdef, result.params, users, history, num_items=log.num_items)
    assert set(inputs) == {"items"} and inputs["items"].shape == (len(users), 3)
    scores, top = rank_items(result.graphdef, result.params, users, k=5, num_items=log.num_items, inputs=inputs,
                             seen=split.history_items)
    for row, u in enumerate(users):
        last = history.items[history.indptr[u] : history.indptr[u + 1]][-3:]
        want = W[:, last].sum(axis=1)
        seen = split.history_items.items[split.history_items.indptr[u] : split.history_items.indptr[u + 1]]
        want[seen] = -np.inf
        np.testing.assert_allclose(scores[row], np.sort(want)[::-1][:5], rtol=1e-5, atol=1e-6)
        assert not set(top[row].tolist()) & set(seen.tolist())
    # A second run on the same checkpoint restores the fit; another setting refuses it.
    again = train(config, log, split, tmp_path / "ck", progress=False)
    assert again.resumed_from == 1 and again.history == result.history
    np.testing.assert_array_equal(np.asarray(again.params["weights"]), np.asarray(result.params["weights"]))
    other = dataclasses.replace(config, knn=dataclasses.replace(config.knn, neighbors=6))
    with pytest.raises(CheckpointError, match="other data or settings"):
        train(other, log, split, tmp_path / "ck", progress=False)


def test_whole_history_itemknn_reads_every_item():
    model = build_model(load_config(None, ["model.name=itemknn"]), 3, 11, seed=0)
    assert isinstance(model, ItemKNN) and model.max_len == 11 and model.neighbors.shape == (11, 11)
    assert model.normalization == "none" and float(model.loss({}, jax.random.key(0))) == 0.0


@pytest.mark.parametrize("name,overrides", [("itemknn", ["knn.neighbors=5", "knn.history=4"]),
                                            ("bpr", ["bpr.epochs=1", "bpr.batch_size=32", "bpr.dim=4"])])
def test_baselines_fit_and_serve_through_the_product_path(tmp_path, name, overrides):
    """``fgjax train``'s path (fit -> checkpoint + serving state) and ``fgjax.load`` serve the same lists."""
    import fgjax
    import pyarrow.parquet as pq

    from conftest import make_log
    from fgjax.pipeline import fit, split_log, write_recommendations

    log = dataclasses.replace(make_log(num_users=24, num_items=20, events_per_user=10, seed=2), item_category=None,
                              categories=None)
    config = load_config(None, [f"model.name={name}", "recommend.k=4", *overrides])
    fitted = fit(config, split_log(log), tmp_path, progress=False)
    assert (fitted.serving.history is not None) == (name == "itemknn")
    write_recommendations(config, fitted, tmp_path / "recs.parquet")
    model = fgjax.load(tmp_path / "checkpoint")
    assert model.config.model.name == name
    assert model.recommend(log.users.values, k=4).equals(pq.read_table(tmp_path / "recs.parquet"))
