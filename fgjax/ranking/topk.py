"""Full-catalog scoring and top-K for any ``Recommender``, in fixed-size user chunks.

One jitted function per chunk of users computes the model's queries, scores
the catalog block by block (``kernels.blocked_top_k``), optionally re-weights
by forgetting (SPEC.md, Recommendation score)

    score(u, i) = w_i * m(u, k(i)) * relevance(u, i)

with relevance = ``sigmoid(logit)`` for ``normalization == "sigmoid"`` models,
the next-item probability ``softmax`` over the whole catalog for
``"softmax"`` models (its per-user log-normalizer comes from a first blocked
pass, so no ``(chunk, items)`` matrix is built) and the logit itself for
``"none"`` models (ItemKNN's nonnegative summed similarities), where
``m(u, k) = ForgettingWeights.user_interest`` and ``k(i)`` is the item's
interest (items without one read column K, ``strategy.item_columns``); it
masks already-seen items and keeps the top K. Only ``(chunk, K)`` results
come back to the host.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fgjax import kernels
from fgjax.data.sequences import Sequences, relative_times
from fgjax.data.split import ItemSets
from fgjax.errors import DataError
from fgjax.ranking.strategy import ForgettingWeights, item_columns
from fgjax.shapes import bucket_size

#: Items scored per step of the blocked passes (memory: chunk x block x hidden floats).
SCORE_BLOCK_ITEMS = 2048


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _item_rows(graphdef, params):
    return nnx.merge(graphdef, params).item_rows()


def _log_normalizer(model, query: jax.Array, rows: jax.Array, num_items: int) -> jax.Array:
    """``(n,)`` ``logsumexp`` of the logits over the catalog, one item block at a time."""
    block = min(SCORE_BLOCK_ITEMS, num_items)
    num_blocks = -(-num_items // block)

    def body(carry, start):
        top, total = carry
        ids = start + jnp.arange(block, dtype=jnp.int32)
        logits = model.score(query, rows[jnp.minimum(ids, num_items - 1)][None])
        logits = jnp.where(ids[None, :] < num_items, logits, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(logits, axis=1))
        total = total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(logits - new_top[:, None]), axis=1)
        return (new_top, total), None

    n = query.shape[0]
    init = (jnp.full((n,), -jnp.inf, query.dtype), jnp.zeros((n,), query.dtype))
    (top, total), _ = jax.lax.scan(body, init, jnp.arange(num_blocks, dtype=jnp.int32) * block)
    return top + jnp.log(total)


@functools.partial(jax.jit, static_argnames=("graphdef", "k", "num_items"))
def _chunk_top_k(graphdef, params, rows, inputs, seen, user_interest, item_interest, item_weight, *, k, num_items):
    """Top-k of one user chunk.

    Args:
      rows: ``(items, h)`` from ``item_rows`` (computed once per call of ``rank_items``).
      inputs: the model's query arrays, each ``(chunk, ...)`` (padding rows repeat a valid user).
      seen: ``(chunk, width)`` int32 items to exclude, padded with ``num_items``.
      user_interest: ``(chunk, K + 1)`` or None; item_interest ``(items,)``;
        item_weight ``(items,)``.
    """
    model = nnx.merge(graphdef, params)
    query = model.query(inputs)  # (chunk, h)
    chunk = query.shape[0]
    softmax = model.normalization == "softmax"
    log_norm = _log_normalizer(model, query, rows, num_items)[:, None] if softmax else None
    if user_interest is not None:
        column = item_columns(item_interest, user_interest.shape[1] - 1)

    def score(ids):  # (1, C) a catalog block, or (chunk, C) candidates -> (chunk, C)
        logits = model.score(query, rows[ids])
        if softmax:
            scores = jnp.exp(logits - log_norm)
        else:
            scores = logits if model.normalization == "none" else jax.nn.sigmoid(logits)
        if user_interest is not None:
            per_item = jnp.take_along_axis(user_interest, jnp.broadcast_to(column[ids], scores.shape), axis=1)
            scores = scores * per_item * item_weight[ids]
        return scores

    # Selection scans the catalog in blocks (kernels.blocked_top_k): no (chunk, items) matrix.
    return kernels.blocked_top_k(score, chunk, num_items, k, exclude=seen, block_size=SCORE_BLOCK_ITEMS)


def query_inputs(graphdef: nnx.GraphDef, params: Any, users: np.ndarray, sequences: Sequences | None = None, *,
                 num_items: int) -> dict[str, np.ndarray]:
    """The model's query arrays for ``users`` ``(n,)``.

    EmbeddingMLP, BPRMF: ``{"user": (n,)}``. Models that query histories: of
    ``{"items": (n, L), "times": (n, L)}`` the ``query_fields`` they read: the
    users' last ``max_len`` items in ``sequences`` (left-padded with
    ``num_items``) and their times in seconds relative to the latest
    (float32); models that read ``interest_ages`` (forgetting_sasrec) also get
    ``(n, L, K)`` float32 ages (``Sequences.last_interest_ages``). ``params``
    may be abstract (``ShapeDtypeStruct``): only the model's static settings are read.

    Raises:
      DataError: no ``sequences`` for a model that queries histories, or no
        interest ages in them for one that reads them.
    """
    model = nnx.merge(graphdef, params)
    users = np.asarray(users, np.int32)
    if tuple(model.query_fields) == ("user",):
        return {"user": users}
    if sequences is None:
        raise DataError(f"{type(model).__name__} ranks users by their histories: pass their sequences")
    items, times = sequences.last(users, model.max_len, pad_item=num_items)
    out = {"items": items}
    if "times" in model.query_fields:
        out["times"] = relative_times(times, items, num_items)
    if "interest_ages" in model.query_fields:
        if sequences.interest_ages is None:
            raise DataError("forgetting_sasrec needs item categories (data.items_path): these histories have no "
                            "interest ages")
        out["interest_ages"] = sequences.last_interest_ages(users, model.max_len)
    return out


def rank_items(
    graphdef: nnx.GraphDef,
    params: Any,
    users: np.ndarray,
    *,
    k: int,
    num_items: int,
    inputs: Mapping[str, np.ndarray] | None = None,
    seen: ItemSets | None = None,
    forgetting: ForgettingWeights | None = None,
    chunk: int = 512,
    memory_budget_mb: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items for each user, best first, for any ``Recommender``.

    Args:
      users: ``(n,)`` int dense user indices: rows of ``seen`` and of
        ``forgetting.user_interest``.
      inputs: the model's query arrays, each ``(n, ...)`` (``query_inputs``);
        default ``{"user": users}`` (EmbeddingMLP).
      seen: items to exclude per user (e.g. training items), or None.
      forgetting: forgetting re-weighting, or None for the model alone.
      chunk: users per device call, lowered (to a power of two) so that the
        ``(chunk, block, hidden)`` intermediate fits ``memory_budget_mb``.

    Returns:
      ``(scores (n, k) float32, items (n, k) int32)``; excluded items never
      appear unless a user has fewer than ``k`` allowed items (then score ``-inf``).
    """
    users = np.asarray(users, np.int32)
    k = min(k, num_items)
    if len(users) == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int32)
    inputs = {"user": users} if inputs is None else {name: np.asarray(x) for name, x in inputs.items()}
    rows = _item_rows(graphdef, params)
    per_user_bytes = 4 * min(num_items, SCORE_BLOCK_ITEMS) * rows.shape[1]
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
    # One width of seen items for every chunk (the largest set, bucketed): one shape, one compilation.
    width = None if seen is None else bucket_size(int(seen.counts()[users].max(initial=1)))
    for start in range(0, len(users), chunk):
        n = min(chunk, len(users) - start)
        # Padding rows repeat the chunk's first user: same shapes, one compilation.
        take = np.concatenate([np.arange(start, start + n), np.full(chunk - n, start)])
        padded = users[take]
        seen_rows = (seen.padded(padded, pad_value=num_items, width=width) if seen is not None
                     else np.full((chunk, 1), num_items, np.int32))
        user_interest = None if forgetting is None else jnp.asarray(forgetting.user_interest[padded])
        values, items = _chunk_top_k(
            graphdef, params, rows, {name: jnp.asarray(x[take]) for name, x in inputs.items()},
            jnp.asarray(seen_rows), user_interest, item_interest, item_weight, k=k, num_items=num_items,
        )
        out_scores[start : start + n] = np.asarray(values)[:n]
        out_items[start : start + n] = np.asarray(items)[:n]
    return out_scores, out_items
