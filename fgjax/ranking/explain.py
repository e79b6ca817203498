"""Forgetting-aware top-K recommendations with an explanation per item.

Each recommended item carries the interest it serves, that interest's state
for the user and its f_k, and the detector's evidence (when the interest was
last active, its trend, its period, whether it was re-surfaced for
exploration), so a reader can see why an item rose or sank.
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
      last_active: optional ``(users, K)`` float64 epoch seconds of the start
        of the last active window (NaN = never).
      trend, period: optional ``(users, K)`` float32 evidence (events per
        window per window; windows, 0 = none).
      explore: optional ``(users, K)`` bool, re-surfaced for exploration.
    """

    item_interest: np.ndarray
    state: np.ndarray
    f: np.ndarray
    categories: Vocabulary
    last_active: np.ndarray | None = None
    trend: np.ndarray | None = None
    period: np.ndarray | None = None
    explore: np.ndarray | None = None

    @classmethod
    def from_analysis(cls, result, item_interest: np.ndarray, categories: Vocabulary, explore=None) -> "Explanations":
        """From a ``ForgettingResult`` (its state, f and evidence at the snapshot time)."""
        last = result.evidence.get("last_active")
        last_active = None
        if last is not None:
            last_active = np.where(last >= 0, result.window_start[np.maximum(last, 0)], np.nan)
        return cls(
            item_interest=item_interest, state=result.state, f=result.f, categories=categories,
            last_active=last_active, trend=result.evidence.get("trend"), period=result.evidence.get("period"),
            explore=explore,
        )


def recommendation_table(
    user_ids: pa.Array,
    users: np.ndarray,
    scores: np.ndarray,
    items: np.ndarray,
    item_vocab: Vocabulary,
    explanations: Explanations | None = None,
) -> pa.Table:
    """Long table: user_id, rank (1-based), item_id, score[, interest, interest_state, f_k, evidence].

    With explanations, the columns interest, interest_state and f_k follow,
    and, where the explanations hold them, last_active (timestamp), trend,
    period and explore; all null for items without an interest or users
    without a state.

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
        if explanations.last_active is not None:
            seconds = explanations.last_active[safe_u, safe_i]
            never = ~known | ~np.isfinite(seconds)
            columns["last_active"] = pa.array(
                (np.where(never, 0, seconds) * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"), mask=never
            )
        for name in ("trend", "period"):
            values = getattr(explanations, name)
            if values is not None:
                columns[name] = pa.array(values[safe_u, safe_i].astype(np.float32), pa.float32(), mask=~known)
        if explanations.explore is not None:
            columns["explore"] = pa.array(explanations.explore[safe_u, safe_i].astype(bool), pa.bool_(), mask=~known)
    return pa.table(columns)

