"""Forgetting-aware top-K recommendations with an explanation per item.

Each recommended item carries the interest it serves, that interest's state
for the user and its f_k, so a reader can see why an item rose or sank.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fgjax import kernels
from fgjax.data.vocab import Vocabulary


@dataclasses.dataclass(frozen=True)
class Explanations:
    """Per-(user, interest) facts used to explain recommendations.

    Attributes:
      item_interest: ``(items,)`` int32, -1 = none.
      state: ``(users, K)`` int8 state codes.
      f: ``(users, K)`` float32 per-interest forgetting.
      categories: interest names.
    """

    item_interest: np.ndarray
    state: np.ndarray
    f: np.ndarray
    categories: Vocabulary


def recommendation_table(
    user_ids: pa.Array,
    users: np.ndarray,
    scores: np.ndarray,
    items: np.ndarray,
    item_vocab: Vocabulary,
    explanations: Explanations | None = None,
) -> pa.Table:
    """Long table: user_id, rank (1-based), item_id, score[, interest, interest_state, f_k].

    Args:
      user_ids: ``(n,)`` raw IDs of the rows of ``scores``/``items``.
      users: ``(n,)`` dense indices of the same users (-1 = unknown user).
      scores, items: ``(n, k)`` from ``rank_items``; ``-inf`` entries (fewer
        allowed items than k) are dropped.
    """
    n, k = items.shape
    keep = np.isfinite(scores).ravel()
    row = np.repeat(np.arange(n), k)[keep]
    flat_items = items.ravel()[keep]
    columns = {
        "user_id": user_ids.take(pa.array(row)),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep]),
        "item_id": item_vocab.decode(flat_items),
        "score": pa.array(scores.ravel()[keep], pa.float32()),
    }
    if explanations is not None:
        interest = explanations.item_interest[flat_items]
        user = users[row]
        known = (interest >= 0) & (user >= 0)
        safe_i, safe_u = np.where(known, interest, 0), np.where(known, user, 0)
        names = pa.array(kernels.STATE_NAMES).take(pa.array(explanations.state[safe_u, safe_i].astype(np.int32)))
        decoded = explanations.categories.decode(safe_i)
        columns["interest"] = pc.if_else(pa.array(known), decoded, pa.nulls(len(decoded), decoded.type))
        columns["interest_state"] = pc.if_else(pa.array(known), names, pa.nulls(len(names), pa.string()))
        columns["f_k"] = pa.array(explanations.f[safe_u, safe_i].astype(np.float32), pa.float32(), mask=~known)
    return pa.table(columns)

