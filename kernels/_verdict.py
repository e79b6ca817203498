"""A learned verdict over the adaptive detector's evidence, vectorized over (user, interest).

The detector (``_detector``) judges a silence by hand-made rules with priors from the population.
This module reads the same state after a window's update as a row of features per (user, interest)
and scores it with a logistic model: ``logit = ((features - mean) / scale) @ weights + bias``. The
weights are fitted elsewhere (``fgjax.evaluation.verdict``, leave-one-story-out in the detection
matrix); here are only the pure functions that compute the features and apply the weights, so the
same code serves the evaluation and a streaming caller.

Every feature is causal: it reads the state after the window, nothing later. They are, in
``VERDICT_FEATURES`` order (``s`` the current silence in windows, ``h`` the windows of history
before it, ``r`` the events per window before it):

- ``log_silence``: log(1 + s);
- ``log_history``: log(1 + h);
- ``log_events``: log(1 + events since the first activity);
- ``log_expected_in_silence``: log(1 + r s), the events the interest's own rate predicts for the silence;
- ``silence_over_longest_gap``: log((s + 1) / (longest gap it came back from + 1));
- ``log_gaps``: log(1 + silences it came back from);
- ``active_share``: active windows / h;
- ``log_recent_expected_in_silence``: log(1 + r' s), r' the events of the last ``recent_windows`` lived windows
  per window of them before the silence (0 once the silence covers them all);
- ``log_user_events_in_silence``: log(1 + the user's events in its other interests during the silence),
  read from the activity buffer (at most its ``T`` windows);
- ``log_user_expected_in_silence``: log(1 + max(R - r, 1e-3) s), R the user's events per window of
  its longest-lived interest's history: what the user's other interests predict for the silence;
- ``user_silence_share``: log(1 + the user's own silence) - log(1 + s): 0 when the whole user went quiet
  with this interest, below when the user stayed active elsewhere;
- ``detector_forgotten``: 1 where the detector calls the interest forgotten;
- ``log_surprise``: log(1 + the detector's surprise of the silence);
- ``recent_drop``: log(1 + expected recent events) - log(1 + recent events), the drop test's evidence;
- ``log_dispersion``: log of the counts' var / mean (>= 1);
- ``log_rate``: log(1 + r).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from ._detector import DetectorOutput, DetectorState
from ._states import FORGOTTEN
from ._timeseries import activity_buffer_ages

VERDICT_FEATURES = (
    "log_silence",
    "log_history",
    "log_events",
    "log_expected_in_silence",
    "silence_over_longest_gap",
    "log_gaps",
    "active_share",
    "log_recent_expected_in_silence",
    "log_user_events_in_silence",
    "log_user_expected_in_silence",
    "user_silence_share",
    "detector_forgotten",
    "log_surprise",
    "recent_drop",
    "log_dispersion",
    "log_rate",
)
# The least rate the user's other interests are credited with (events per window): a user with one
# interest still gets a finite log.
_OTHER_RATE_FLOOR = 1e-3


class VerdictParams(NamedTuple):
    """A fitted logistic verdict; vectors are ``(len(VERDICT_FEATURES),)`` float32, ``bias`` a scalar.

    ``mean`` and ``scale`` standardize the features (the training rows' mean and standard deviation);
    ``weights`` and ``bias`` act on the standardized row.
    """

    mean: ArrayLike
    scale: ArrayLike
    weights: ArrayLike
    bias: ArrayLike


def verdict_features(state: DetectorState, output: DetectorOutput, recent_windows: int = 16) -> Array:
    """``(users, K, len(VERDICT_FEATURES))`` float32: the module docstring's features after one window's update.

    All users at once (not in the detector's ``user_block`` blocks): its two buffer sums are one fused
    reduction, so no ``(users, K, T)`` temporary is written on XLA:CPU.

    Args:
      state: the detector state after the window (``detector_update``'s first result).
      output: that update's evidence (its second result).
      recent_windows: the span (windows) of ``log_recent_expected_in_silence``.
    """
    f32 = jnp.float32
    silence = state.silence.astype(f32)
    alive = state.alive.astype(f32)
    history = jnp.maximum(alive - silence, 1.0)
    rate = output.rate.astype(f32)
    counts = state.buffer.counts  # (users, K, T) uint8, slot order
    length = counts.shape[-1]
    age = activity_buffer_ages(state.buffer)  # (T,)
    # The last `recent_windows` lived windows (silent ones included: they hold 0), and the user's events in every
    # interest during this one's silence (at most the buffer's T windows; the interest itself had none there, so
    # they are all its other interests'). Both are masks by age over the ring as it lies, summed in int32 in one
    # reduction, as kernels._detector._recent_sums does: XLA:CPU fuses it into one loop, where a scatter of the
    # user's counts into age order and a cumulative sum took 2-3x the whole update's time.
    span = jnp.minimum(state.alive, recent_windows)
    within = jnp.minimum(state.silence, length)
    user_slots = jnp.sum(counts.astype(jnp.int32), axis=1, keepdims=True)  # (users, 1, T)
    recent, user_in_silence = lax.reduce(
        (jnp.where(age < span[..., None], counts, 0).astype(jnp.int32),
         jnp.where(age < within[..., None], user_slots, 0)),
        (np.int32(0), np.int32(0)), lambda x, y: (x[0] + y[0], x[1] + y[1]), (counts.ndim - 1,))
    recent, user_in_silence = recent.astype(f32), user_in_silence.astype(f32)
    lived_before = jnp.maximum(span - jnp.minimum(state.silence, recent_windows), 1).astype(f32)
    recent_expected = recent / lived_before * silence
    user_history = jnp.maximum(jnp.max(alive, axis=-1, keepdims=True), 1.0)
    user_rate = jnp.sum(state.total, axis=-1, keepdims=True) / user_history
    other_rate = jnp.maximum(user_rate - rate, _OTHER_RATE_FLOOR)
    lived = state.alive > 0
    user_silence = jnp.min(jnp.where(lived, state.silence, jnp.iinfo(jnp.int32).max), axis=-1, keepdims=True)
    user_silence = jnp.where(jnp.any(lived, axis=-1, keepdims=True), user_silence, 0).astype(f32)
    columns = (
        jnp.log1p(silence),
        jnp.log1p(history),
        jnp.log1p(state.total),
        jnp.log1p(rate * silence),
        jnp.log((silence + 1.0) / (state.longest_gap.astype(f32) + 1.0)),
        jnp.log1p(state.gaps.astype(f32)),
        state.active_windows.astype(f32) / history,
        jnp.log1p(recent_expected),
        jnp.log1p(user_in_silence),
        jnp.log1p(other_rate * silence),
        jnp.log1p(user_silence) - jnp.log1p(silence),
        (state.state == FORGOTTEN).astype(f32),
        jnp.log1p(state.surprise),
        jnp.log1p(output.expected_recent) - jnp.log1p(output.recent),
        jnp.log(jnp.maximum(output.dispersion, 1.0)),
        jnp.log1p(rate),
    )
    return jnp.stack([jnp.asarray(c, f32) for c in columns], axis=-1)


def verdict_logit(features: ArrayLike, params: VerdictParams) -> Array:
    """``(...)`` float32 log-odds that the interest is forgotten, for ``(..., len(VERDICT_FEATURES))`` features."""
    standard = (jnp.asarray(features, jnp.float32) - params.mean) / params.scale
    return lax.dot_general(standard, jnp.asarray(params.weights, jnp.float32),
                           (((standard.ndim - 1,), (0,)), ((), ()))) + params.bias


def verdict_silent(state: DetectorState) -> Array:
    """``(users, K)`` bool: the interests the verdict judges, silent for one window or more after activity."""
    return (state.alive > 0) & (state.silence > 0)


def verdict_log_odds(state: DetectorState, features: ArrayLike, params: VerdictParams) -> Array:
    """``(users, K)`` float32 ``verdict_logit`` of the interests ``verdict_silent`` judges; NaN elsewhere (an active
    or never active interest: no verdict, which reads as null in ``states.parquet``)."""
    return jnp.where(verdict_silent(state), verdict_logit(features, params), jnp.nan)


def verdict_forgotten(state: DetectorState, features: ArrayLike, params: VerdictParams,
                      threshold: ArrayLike) -> Array:
    """``(users, K)`` bool: silent interests whose ``verdict_log_odds`` exceed ``threshold`` (NaN never does);
    activity ends the verdict."""
    return verdict_log_odds(state, features, params) > threshold
