"""Full-catalog scoring and top-K, in fixed-size user chunks.

One jitted function scores a chunk of users against every item, optionally
re-weights by forgetting (SPEC.md, Recommendation score)

    score(u, i) = w_i * m(u, k(i)) * sigmoid(logit(u, i))

where ``m(u, k) = max(p(k | u) * state_weight(state(u, k)), floor)`` and
``k(i)`` is the item's interest (items without one get the user's neutral
weight, that of a uniform p over the user's interests), masks already-seen
items and selects the top K. Only
``(chunk, K)`` results come back to the host.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fgjax import kernels
from fgjax.data.split import ItemSets
from fgjax.ranking.strategy import ForgettingWeights
from fgjax.shapes import bucket_size


#: Items scored per step of the blocked top-K (memory: chunk x block x hidden floats).
SCORE_BLOCK_ITEMS = 2048


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _project_items(graphdef, params):
    return nnx.merge(graphdef, params).project_items()


@functools.partial(jax.jit, static_argnames=("graphdef", "k", "num_items"))
def _chunk_top_k(graphdef, params, item_part, users, seen, user_interest, item_interest, item_weight, *, k, num_items):
    """Top-k of one user chunk.

    Args:
      item_part: ``(items, hidden)`` from ``project_items`` (computed once per call of ``rank_items``).
      users: ``(chunk,)`` int32 (padding rows repeat a valid user).
      seen: ``(chunk, width)`` int32 items to exclude, padded with ``num_items``.
      user_interest: ``(chunk, K + 1)`` or None; item_interest ``(items,)``;
        item_weight ``(items,)``.
    """
    model = nnx.merge(graphdef, params)
    if user_interest is not None:
        # Items without an interest (-1) take the last column, the neutral weight.
        column = jnp.where(item_interest >= 0, item_interest, user_interest.shape[1] - 1)

    def score(ids):  # (1, C) a catalog block, or (chunk, C) candidates -> (chunk, C)
        scores = jax.nn.sigmoid(model.score_item_rows(users, item_part[ids]))
        if user_interest is not None:
            per_item = jnp.take_along_axis(user_interest, jnp.broadcast_to(column[ids], scores.shape), axis=1)
            scores = scores * per_item * item_weight[ids]
        return scores

    # Selection scans the catalog in blocks (kernels.blocked_top_k): no (chunk, items) matrix.
    return kernels.blocked_top_k(score, users.shape[0], num_items, k, exclude=seen, block_size=SCORE_BLOCK_ITEMS)


def rank_items(
    graphdef: nnx.GraphDef,
    params: Any,
    users: np.ndarray,
    *,
    k: int,
    num_items: int,
    seen: ItemSets | None = None,
    forgetting: ForgettingWeights | None = None,
    chunk: int = 512,
    memory_budget_mb: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items for each user, best first.

    Args:
      users: ``(n,)`` int dense user indices.
      seen: items to exclude per user (e.g. training items), or None.
      forgetting: forgetting re-weighting, or None for the model alone.
      chunk: users per device call, lowered (to a power of two) so that the
        ``(chunk, block, hidden)`` intermediate fits ``memory_budget_mb``.

    Returns:
      ``(scores, items)``, each ``(n, k)``; excluded items never appear unless
      a user has fewer than ``k`` allowed items (then score ``-inf``).
    """
    users = np.asarray(users, np.int32)
    k = min(k, num_items)
    if len(users) == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int32)
    item_part = _project_items(graphdef, params)
    per_user_bytes = 4 * min(num_items, SCORE_BLOCK_ITEMS) * item_part.shape[1]
    fits = max(1, memory_budget_mb * 2**20 // per_user_bytes)
    # Few users: a smaller power-of-two chunk avoids scoring padding rows.
    chunk = min(chunk, bucket_size(len(users)), 1 << (fits.bit_length() - 1))
    out_scores = np.empty((len(users), k), np.float32)
    out_items = np.empty((len(users), k), np.int32)
    if forgetting is not None:
        item_interest = jnp.asarray(forgetting.item_interest, jnp.int32)
        item_weight = jnp.asarray(forgetting.item_weight, jnp.float32)
    else:
        item_interest = item_weight = None
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        n = len(part)
        padded = np.concatenate([part, np.full(chunk - n, part[0], np.int32)]) if n < chunk else part
        if seen is not None:
            seen_rows = seen.padded(padded, pad_value=num_items)
        else:
            seen_rows = np.full((len(padded), 1), num_items, np.int32)
        user_interest = None if forgetting is None else jnp.asarray(forgetting.user_interest[padded])
        values, items = _chunk_top_k(
            graphdef, params, item_part, jnp.asarray(padded), jnp.asarray(seen_rows),
            user_interest, item_interest, item_weight, k=k, num_items=num_items,
        )
        out_scores[start : start + n] = np.asarray(values)[:n]
        out_items[start : start + n] = np.asarray(items)[:n]
    return out_scores, out_items
