"""The recommendation strategy: how interest states and p(k|u,t) become scoring weights.

``forgetting_weights`` turns a forgetting analysis (anything with ``state``,
``p`` and ``ever`` arrays of shape ``(users, K)``, e.g.
``fgjax.analysis.ForgettingResult``) and ``config.recommend`` into the
per-(user, interest) multipliers that ``fgjax.ranking.rank_items`` applies;
``interest_priorities`` ranks each user's interests the same way, and
``exploration_mask`` says which forgotten interests are re-surfaced.
``item_columns`` and ``interest_weighted`` apply the weights to scores (every
ranking path, dense or blocked, goes through them).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fgjax import kernels
from fgjax.config import Config


@dataclasses.dataclass(frozen=True)
class ForgettingWeights:
    """What the forgetting analysis contributes to scoring.

    Attributes:
      user_interest: ``(users, K + 1)`` float32 m(u, k); column K is the
        weight of items without an interest.
      item_interest: ``(items,)`` int32 interest of each item; -1 = none.
      item_weight: ``(items,)`` float32 w_i (popularity, freshness, business).
    """

    user_interest: np.ndarray
    item_interest: np.ndarray
    item_weight: np.ndarray


def item_columns(item_interest, num_interests: int):
    """``(items,)`` column of ``user_interest`` each item reads: its interest, or
    ``num_interests`` (the neutral column K) for items without one (-1).
    Works on NumPy and jax arrays alike."""
    return (item_interest >= 0) * item_interest + (item_interest < 0) * num_interests


def interest_weighted(scores: jax.Array, user_interest: jax.Array, columns: jax.Array,
                      strength: float | jax.Array = 1.0) -> jax.Array:
    """``scores * m(u, k(i)) ** strength`` (SPEC.md's score at strength 1; strength 0 = the model alone).

    Args:
      scores: ``(n, C)`` relevance of C items (a catalog block, candidates, or every item).
      user_interest: ``(n, K + 1)`` m(u, k) of the rows' users.
      columns: the C items' columns in ``user_interest`` (``item_columns``), ``(C,)`` or ``(n, C)``.
    """
    per_item = jnp.take_along_axis(user_interest, jnp.broadcast_to(columns, scores.shape), axis=1)
    if isinstance(strength, (int, float)) and strength == 1:
        return scores * per_item  # exactly SPEC.md's product (no pow rounding)
    return scores * per_item ** strength


def exploration_mask(result, config: Config) -> np.ndarray:
    """``(users, K)`` bool: forgotten interests re-surfaced this time (``recommend.explore_probability``)."""
    rcfg = config.recommend
    forgotten = result.state == kernels.FORGOTTEN
    if rcfg.explore_probability <= 0:
        return np.zeros_like(forgotten)
    draw = np.random.default_rng([rcfg.explore_seed, 0x5EED]).random(forgotten.shape)
    return forgotten & (draw < rcfg.explore_probability)


def interest_priorities(result, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Each user's interests ranked by priority ``p(k|u,t) * state_weight(state)``.

    Re-surfaced (exploration) interests count as active. Interests the user
    never had come last with priority 0.

    Returns:
      ``(order (users, K) int32 interest indices, priority (users, K) float32)``, best first.
    """
    rcfg = config.recommend
    per_state = np.array([rcfg.state_weights.get(n, 1.0) for n in kernels.STATE_NAMES], np.float32)
    state = np.where(exploration_mask(result, config), kernels.ACTIVE, result.state)
    priority = np.where(result.ever, result.p * per_state[state], 0.0).astype(np.float32)
    order = np.argsort(-priority, axis=1, kind="stable").astype(np.int32)
    return order, np.take_along_axis(priority, order, axis=1)


def forgetting_weights(result, config: Config, log) -> ForgettingWeights:
    """Scoring weights ``m(u, k) = max(p(k|u) * state_weight(state(u, k)), floor)``.

    The strategy of ``config.recommend``: state weights, and forgotten
    interests re-surfaced for exploration weighted as active. A column K is
    appended for items without a category: the mean weight of the interests
    the user has had, so such items are neither boosted nor suppressed
    against the user's other items (for a user with no interest, the floor,
    like everything else). The floor keeps items of never-seen or forgotten
    interests ordered by the model instead of tied at zero.
    """
    rcfg = config.recommend
    per_state = np.array([rcfg.state_weights.get(n, 1.0) for n in kernels.STATE_NAMES], np.float32)
    state = np.where(exploration_mask(result, config), kernels.ACTIVE, result.state)
    weights = result.p * per_state[state]
    had = result.ever.sum(axis=1)
    neutral = np.where(had > 0, np.sum(weights * result.ever, axis=1) / np.maximum(had, 1), 0.0)
    user_interest = np.maximum(np.concatenate([weights, neutral[:, None]], axis=1), rcfg.interest_floor)
    return ForgettingWeights(
        user_interest=user_interest.astype(np.float32),
        item_interest=log.item_category.astype(np.int32),
        item_weight=np.ones(log.num_items, np.float32),
    )
