"""Ranking metrics at K over full-ranking top-K lists, per user.

Targets are padded ``(users, T)`` int arrays with -1 padding; each user's
targets are distinct items. Users without targets get 0 everywhere and are
left out of ``mean_metrics`` (as is standard).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

METRIC_NAMES = ("precision", "recall", "f1", "ndcg", "hit_rate", "mrr", "map")


def hit_matrix(top_items: ArrayLike, targets: ArrayLike) -> Array:
    """``(users, K)`` bool: ranked item j of user u is one of u's targets."""
    top_items = jnp.asarray(top_items)
    targets = jnp.asarray(targets)
    valid = targets >= 0
    return jnp.any((top_items[:, :, None] == targets[:, None, :]) & valid[:, None, :], axis=-1)


# Jitted: eagerly these ~40 small ops would each dispatch (and, per new shape, compile) on their own.
@functools.partial(jax.jit, static_argnames="k")
def ranking_metrics(top_items: ArrayLike, targets: ArrayLike, k: int) -> dict[str, Array]:
    """Precision, Recall, F1, NDCG, HitRate, MRR and MAP at ``k``, per user.

    Args:
      top_items: ``(users, L)`` item indices, best first; if ``L < k`` (a
        catalog smaller than k) the missing ranks count as misses.
      targets: ``(users, T)`` relevant item indices, -1 padded.
      k: cut-off.

    Returns:
      name -> ``(users,)`` float32. Definitions (binary relevance, n = number
      of targets): P = hits/k; R = hits/n; F1 = 2PR/(P+R) per user;
      NDCG = DCG/IDCG with gain 1/log2(rank+1) and IDCG over min(n, k) hits;
      HitRate = any hit; MRR = 1/rank of the first hit (0 if none in k);
      MAP = sum_{j <= k} P@j * hit_j / n, trec_eval's ``map_cut_k`` (and
      ranx's ``map@k``): divided by the number of relevant items n, not by
      min(n, k), so a user with more targets than k cannot reach 1.
    """
    top_items = jnp.asarray(top_items)[:, :k]
    if top_items.shape[1] < k:
        top_items = jnp.pad(top_items, ((0, 0), (0, k - top_items.shape[1])), constant_values=-1)
    hits = hit_matrix(top_items, targets).astype(jnp.float32)
    n = jnp.sum(jnp.asarray(targets) >= 0, axis=-1).astype(jnp.float32)
    has = n > 0
    ranks = jnp.arange(1, k + 1, dtype=jnp.float32)
    num_hits = jnp.sum(hits, axis=-1)
    precision = num_hits / k
    recall = jnp.where(has, num_hits / jnp.maximum(n, 1.0), 0.0)
    pr = precision + recall
    f1 = jnp.where(pr > 0, 2 * precision * recall / jnp.where(pr > 0, pr, 1.0), 0.0)
    discounts = 1.0 / jnp.log2(ranks + 1.0)
    dcg = jnp.sum(hits * discounts, axis=-1)
    ideal_hits = jnp.minimum(n, k)
    idcg = jnp.sum(jnp.where(ranks[None, :] <= ideal_hits[:, None], discounts, 0.0), axis=-1)
    ndcg = jnp.where(has, dcg / jnp.where(idcg > 0, idcg, 1.0), 0.0)
    hit_rate = (num_hits > 0).astype(jnp.float32)
    first = jnp.argmax(hits, axis=-1)
    mrr = jnp.where(num_hits > 0, 1.0 / (first + 1.0), 0.0)
    precision_at_j = jnp.cumsum(hits, axis=-1) / ranks
    ap = jnp.where(has, jnp.sum(precision_at_j * hits, axis=-1) / jnp.maximum(n, 1.0), 0.0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ndcg": ndcg,
        "hit_rate": hit_rate,
        "mrr": mrr,
        "map": ap,
    }


@jax.jit
def mean_metrics(per_user: dict[str, ArrayLike], targets: ArrayLike) -> dict[str, Array]:
    """Average per-user metrics over users that have at least one target."""
    has = jnp.sum(jnp.asarray(targets) >= 0, axis=-1) > 0
    count = jnp.maximum(jnp.sum(has), 1)
    return {name: jnp.sum(jnp.where(has, jnp.asarray(v), 0.0)) / count for name, v in per_user.items()}
