"""Streaming interest state I(u, t): an ``init``/``update`` pair (optax style).

    I(u, t) = g * I(u, t-1) + sum_{e in window t, user u} w_e * exp(-(end_t - ts_e) / tau) * phi(item_e)

with ``g = exp(-window / tau)``. ``phi`` is a one-hot interest (category
index per event) or a dense vector per event (embedding interests). ``tau =
inf`` means ``g = 1`` and ``inv_tau = 0``; the seed's per-window indicator is
``g = 0`` ("reset each window") with ``inv_tau = 0``.

Memory is O(users x K): events are folded in window by window and dropped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike


class InterestState(NamedTuple):
    """Interest vectors at the last two closed windows.

    Attributes:
      current: ``(users, K)`` I(u, t).
      previous: ``(users, K)`` I(u, t-1).
      window: ``()`` int32 index of the last closed window (-1 before any).
    """

    current: Array
    previous: Array
    window: Array


class WindowEvents(NamedTuple):
    """A batch of events that fall in one window (padded to a fixed size).

    Attributes:
      user: ``(events,)`` int32 user index; padding rows use any index in
        range (or ``users``, which is dropped) with weight 0.
      interest: ``(events,)`` int32 interest index (one-hot phi), or
        ``(events, K)`` float phi vectors (embedding interests).
      weight: ``(events,)`` float event weight w_e (0 for padding).
      age: ``(events,)`` float ``end_t - ts_e`` in the same unit as tau (>= 0).
    """

    user: Array
    interest: Array
    weight: Array
    age: Array


def decay_factors(window: float, half_life: float, *, reset_each_window: bool = False) -> tuple[float, float]:
    """``(g, 1/tau)`` for a window length and a half-life in the same unit.

    ``tau = half_life / ln 2``; ``half_life = inf`` gives ``(1, 0)``;
    ``reset_each_window`` gives ``g = 0`` (the seed's per-window indicator).
    """
    if not half_life > 0:
        raise ValueError(f"half_life must be > 0 (or inf), got {half_life!r}")
    inv_tau = 0.0 if math.isinf(half_life) else math.log(2.0) / half_life
    decay = 0.0 if reset_each_window else math.exp(-window * inv_tau)
    return decay, inv_tau


def interest_state_init(num_users: int, num_interests: int, dtype=jnp.float32) -> InterestState:
    """All-zero state before the first window."""
    zeros = jnp.zeros((num_users, num_interests), dtype)
    return InterestState(current=zeros, previous=zeros, window=jnp.asarray(-1, jnp.int32))


def window_contributions(events: WindowEvents, num_users: int, num_interests: int, *, inv_tau: ArrayLike) -> Array:
    """``(users, K)`` sum of ``w_e exp(-age_e / tau) phi_e`` per user.

    User indices >= ``users`` are dropped (so ``users`` is the pad index);
    negative indices wrap around as in NumPy, so never pad with -1.
    """
    scale = events.weight * jnp.exp(-jnp.asarray(inv_tau, events.weight.dtype) * events.age)
    out = jnp.zeros((num_users, num_interests), scale.dtype)
    if events.interest.ndim == 1:
        return out.at[events.user, events.interest].add(scale, mode="drop")
    return out.at[events.user].add(scale[:, None] * events.interest.astype(scale.dtype), mode="drop")


def interest_state_update(
    state: InterestState,
    events: WindowEvents,
    *,
    decay: ArrayLike,
    inv_tau: ArrayLike,
) -> InterestState:
    """Close one window: fold its events into the decayed state.

    Args:
      state: the state after window t-1.
      events: the events of window t.
      decay: ``g = exp(-window / tau)`` (0 resets each window).
      inv_tau: ``1 / tau`` in the unit of ``events.age`` (0 for tau = inf).

    Returns:
      The state after window t (``previous`` = the old ``current``).
    """
    num_users, num_interests = state.current.shape
    return interest_state_apply(state, window_contributions(events, num_users, num_interests, inv_tau=inv_tau), decay=decay)


def interest_state_apply(state: InterestState, added: ArrayLike, *, decay: ArrayLike) -> InterestState:
    """Close one window given its ``(users, K)`` contributions (from ``window_contributions``).

    Split from ``interest_state_update`` for callers that also need the
    contributions themselves (e.g. which interests were active in the window).
    """
    current = jnp.asarray(decay, state.current.dtype) * state.current + jnp.asarray(added, state.current.dtype)
    return InterestState(current=current, previous=state.current, window=state.window + 1)
