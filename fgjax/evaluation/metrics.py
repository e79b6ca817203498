"""Evaluation under the temporal leave-last-out protocol, full ranking.

Every method ranks the whole catalog for each test user with the items seen
before the test item masked, and is scored with the same metric kernels.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from fgjax import kernels
from fgjax.config import Config
from fgjax.data.sequences import Sequences
from fgjax.data.split import ItemSets, TemporalSplit
from fgjax.ranking.strategy import ForgettingWeights
from fgjax.ranking.topk import query_inputs, rank_items


def metrics_at(top_items: np.ndarray, targets: np.ndarray, ks: list[int]) -> dict[str, float]:
    """``{"ndcg@10": ..., ...}``: per-user metrics averaged over users with targets.

    Args:
      top_items: ``(users, >= max(ks))`` ranked item indices.
      targets: ``(users, T)`` relevant items, -1 padded.
    """
    out: dict[str, float] = {}
    for k in ks:
        means = kernels.mean_metrics(kernels.ranking_metrics(top_items, targets, k), targets)
        out.update({f"{name}@{k}": float(value) for name, value in means.items()})
    return out


def popularity_top_k(popularity: np.ndarray, users: np.ndarray, seen: ItemSets, k: int, *, chunk: int = 1024) -> np.ndarray:
    """``(users, k)`` most popular items per user, the user's seen items excluded."""
    num_items = len(popularity)
    out = np.empty((len(users), k), np.int32)
    scores = jnp.asarray(popularity, jnp.float32)
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        exclude = np.zeros((len(part), num_items + 1), bool)
        rows = seen.padded(part, pad_value=num_items)
        exclude[np.arange(len(part))[:, None], rows] = True
        _, top = kernels.masked_top_k(jnp.broadcast_to(scores, (len(part), num_items)), k, exclude=exclude[:, :num_items])
        out[start : start + len(part)] = np.asarray(top)
    return out


def item_popularity(split: TemporalSplit, num_items: int) -> np.ndarray:
    """``(items,)`` number of distinct training users per item."""
    return np.bincount(split.train_items.items, minlength=num_items).astype(np.float32)


def evaluate(
    config: Config,
    graphdef,
    params,
    split: TemporalSplit,
    num_items: int,
    forgetting: ForgettingWeights | None,
    *,
    history: Sequences | None = None,
) -> dict[str, Any]:
    """Metrics of popularity, the model, and the model with forgetting re-ranking on the test targets.

    Args:
      history: for sequence models, each user's items before its test item
        (their queries); None for models that query by user index.
    """
    ks = sorted(config.evaluate.ks)
    k = min(max(ks), num_items)
    users = np.flatnonzero(split.test_target >= 0).astype(np.int32)
    targets = split.test_target[users][:, None]
    seen = split.history_items
    results: dict[str, dict[str, float]] = {}
    pop = popularity_top_k(item_popularity(split, num_items), users, seen, k)
    results["popularity"] = metrics_at(pop, targets, ks)
    inputs = query_inputs(graphdef, params, users, history, num_items=num_items)
    rank = functools.partial(rank_items, graphdef, params, users, k=k, num_items=num_items, inputs=inputs, seen=seen,
                             chunk=config.recommend.user_chunk, memory_budget_mb=config.recommend.score_memory_mb)
    results[config.model.name] = metrics_at(rank()[1], targets, ks)
    if forgetting is not None:
        results[f"{config.model.name}+forgetting"] = metrics_at(rank(forgetting=forgetting)[1], targets, ks)
    return {"protocol": config.evaluate.protocol, "num_test_users": int(len(users)), "ks": ks, "results": results}
