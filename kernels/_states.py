"""Per-(user, interest) forgetting states with a simple threshold rule.

Codes (int8): 0 none (never seen), 1 new, 2 active, 3 declining,
4 forgotten, 5 reactivated. The adaptive detector replaces the thresholds
later; the codes stay.

Why the level against its peak, and not f_k: one window's decline is bounded,
``f_k <= (1 - g) / g`` (0.104 at a half-life of 7 windows), whatever the
user does, and an idle one-interest user reaches that bound while a user with
several interests does not. The ratio ``I_k / peak_k`` measures how far an
interest has fallen from its own high, the same way for every user.
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
    *,
    declining_ratio: ArrayLike,
    forgotten_ratio: ArrayLike,
) -> Array:
    """One window of the state machine, elementwise over ``(..., K)``.

    Args:
      previous_state: ``(..., K)`` int codes after window t-1.
      active_now: ``(..., K)`` bool, the user had events of this interest in t.
      current: ``(..., K)`` I(u, t).
      peak: ``(..., K)`` the interest's high, max of I since it last (re)appeared.
      declining_ratio: I_k below this share of its peak means declining.
      forgotten_ratio: without activity, I_k below this share of its peak
        means forgotten (take it below ``declining_ratio``).

    Rules: an interest appears as ``new`` and comes back from ``forgotten`` as
    ``reactivated``; otherwise it is ``forgotten`` when idle and below
    ``forgotten_ratio * peak`` (and stays so until activity), ``declining``
    when below ``declining_ratio * peak``, else ``active``.

    Returns:
      ``(..., K)`` int8 codes after window t.
    """
    prev = jnp.asarray(previous_state).astype(jnp.int8)
    active_now = jnp.asarray(active_now, bool)
    current = jnp.asarray(current)
    peak = jnp.asarray(peak)
    level = jnp.where(current < declining_ratio * peak, DECLINING, ACTIVE)
    with_activity = jnp.where(prev == NONE, NEW, jnp.where(prev == FORGOTTEN, REACTIVATED, level))
    faded = (prev == FORGOTTEN) | (current < forgotten_ratio * peak)
    without_activity = jnp.where(prev == NONE, NONE, jnp.where(faded, FORGOTTEN, level))
    return jnp.where(active_now, with_activity, without_activity).astype(jnp.int8)
