"""Per-(user, interest) forgetting states with a simple threshold rule.

Codes (int8): 0 none (never seen), 1 new, 2 active, 3 declining,
4 forgotten, 5 reactivated. The adaptive detector replaces the thresholds
later; the codes and the update signature stay.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

STATE_NAMES = ("none", "new", "active", "declining", "forgotten", "reactivated")
NONE, NEW, ACTIVE, DECLINING, FORGOTTEN, REACTIVATED = range(6)


def threshold_states(
    previous_state: ArrayLike,
    active_now: ArrayLike,
    current: ArrayLike,
    peak: ArrayLike,
    f: ArrayLike,
    *,
    decline_threshold: ArrayLike,
    forgotten_ratio: ArrayLike,
) -> Array:
    """One window of the state machine, elementwise over ``(..., K)``.

    Args:
      previous_state: ``(..., K)`` int codes after window t-1.
      active_now: ``(..., K)`` bool, the user had events of this interest in t.
      current: ``(..., K)`` I(u, t).
      peak: ``(..., K)`` running max of I over windows <= t.
      f: ``(..., K)`` per-interest forgetting f_k(u, t).
      decline_threshold: f_k above it means declining.
      forgotten_ratio: without activity, I_k below this share of its peak
        means forgotten.

    Rules: an interest appears as ``new``; with activity it is ``reactivated``
    if it was forgotten, else ``declining`` if f_k > threshold, else ``active``;
    without activity it is ``forgotten`` once I_k < ratio * peak, ``declining``
    if f_k > threshold, else it keeps its state (``new`` and ``reactivated``
    settle to ``active``).

    Returns:
      ``(..., K)`` int8 codes after window t.
    """
    prev = jnp.asarray(previous_state).astype(jnp.int8)
    active_now = jnp.asarray(active_now, bool)
    f = jnp.asarray(f)
    current = jnp.asarray(current)
    peak = jnp.asarray(peak)
    declining = f > decline_threshold
    faded = current < forgotten_ratio * peak
    settled = jnp.where((prev == NEW) | (prev == REACTIVATED), ACTIVE, prev)
    with_activity = jnp.where(
        prev == NONE,
        NEW,
        jnp.where(prev == FORGOTTEN, REACTIVATED, jnp.where(declining, DECLINING, ACTIVE)),
    )
    without_activity = jnp.where(
        prev == NONE,
        NONE,
        jnp.where(faded | (prev == FORGOTTEN), FORGOTTEN, jnp.where(declining, DECLINING, settled)),
    )
    return jnp.where(active_now, with_activity, without_activity).astype(jnp.int8)
