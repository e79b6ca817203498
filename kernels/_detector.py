"""Adaptive forgetting detection per (user, interest): an ``init``/``update`` pair.

Each window, for every (user, interest) at once, the detector asks whether
the interest's current silence or its recent drop is *unusual for this user
and this interest*, instead of comparing with one global threshold:

- **silence test**: after an interest's last event, the chance of ``s``
  more silent windows is ``p_silent ** s``, where ``p_silent`` is the larger
  of the interest's own share of silent windows (with a Beta prior
  ``(prior_active, prior_silent)``, so one window of history is not trusted)
  and the Poisson chance ``exp(-rate)`` of an empty window at its rate.
  The limit is ``s* = ceil(log(false_alarm) / log(p_silent))``, raised to
  ``ceil(gap_factor * expected_gap)``, where the expected gap is the longest
  silence the interest has already come back from, or its dominant period
  (periodogram over the ring buffer) when that period is strong: a user who
  comes back every five windows is not forgetting after four.
- **drop test** (slow fades, which keep silences short): the events of the
  last ``recent_windows`` windows are far below what the interest's earlier
  rate predicts, ``PoissonCDF(recent; rate_before * n) < false_alarm`` and
  ``recent <= forgotten_ratio * rate_before * n``; skipped for strongly
  periodic interests, whose counts are not Poisson.

States (``kernels.STATE_NAMES``): an interest is ``new`` for its first
``new_windows`` windows, ``reactivated`` for ``new_windows`` windows after
it comes back from ``forgotten``, ``forgotten`` when either test fires (and
stays so until activity), ``declining`` when its silence reached half of
``s*`` or its recent rate is below ``declining_ratio`` of the earlier one
with a negative trend, else ``active``.

Per user, ``F(u, t)`` is also compared with an adaptive threshold from the
user's own F history (``mean + degree_z * std``), reported as ``f_alarm``.

Parameters are a ``DetectorParams`` pytree of scalars, so sweeping a knob
(the precision-recall curve) does not recompile.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array
from jax.scipy.special import gammaincc
from jax.typing import ArrayLike

from ._states import ACTIVE, DECLINING, FORGOTTEN, NEW, NONE, REACTIVATED
from ._timeseries import (
    ActivityBuffer,
    RunningMoments,
    activity_buffer_init,
    activity_buffer_ordered,
    activity_buffer_update,
    adaptive_threshold,
    dominant_period,
    running_moments_init,
    running_moments_update,
    trend_slope,
)

_NEVER = -1  # last_active before any activity


class DetectorParams(NamedTuple):
    """Detector knobs (scalars; traced, so sweeps reuse one compilation)."""

    false_alarm: ArrayLike = 0.002  # per-window chance that a test fires on an interest that is not forgotten
    gap_factor: ArrayLike = 1.5  # silence limit >= this times the expected gap
    min_strength: ArrayLike = 0.5  # periodogram peak share that counts as periodic
    recent_windows: ArrayLike = 3  # windows of the drop test and of the trend
    forgotten_ratio: ArrayLike = 0.25  # drop test: recent <= this share of the expected events
    declining_ratio: ArrayLike = 0.5  # recent below this share with a negative trend: declining
    min_history: ArrayLike = 4  # windows of history before the drop test may fire
    new_windows: ArrayLike = 2  # windows an interest stays new / reactivated
    prior_active: ArrayLike = 1.0  # Beta prior on the share of active windows
    prior_silent: ArrayLike = 0.5
    degree_z: ArrayLike = 2.0  # user F alarm: F > mean + degree_z * std of the user's own F
    degree_fallback: ArrayLike = 1.0  # F alarm threshold before the user has two F values


class DetectorState(NamedTuple):
    """Per-(user, interest) detector state; shapes ``(users, K)`` unless noted.

    Attributes:
      buffer: ring buffer of the last T windows' counts, ``(T, users, K)`` uint8.
      window: ``()`` int32 windows closed so far.
      total: events since first activity (float32, not saturated).
      alive: windows since first activity, this one included (0 = never active).
      active_windows: windows with activity.
      silence: windows without activity since the last active one.
      longest_gap: longest silence the interest came back from.
      since_return: windows since it came back from forgotten (large if never).
      last_active: index of the last active window (-1 = never).
      state: int8 codes.
      degree_moments: ``(users,)`` running moments of F(u, t) since the user's first activity.
    """

    buffer: ActivityBuffer
    window: Array
    total: Array
    alive: Array
    active_windows: Array
    silence: Array
    longest_gap: Array
    since_return: Array
    last_active: Array
    state: Array
    degree_moments: RunningMoments


class DetectorOutput(NamedTuple):
    """What one window's update found; the evidence behind each state.

    Attributes (``(users, K)`` unless noted):
      state: int8 codes after the window.
      silence, silence_limit: int32 the current silence and its limit s* (0 if never active).
      rate: float32 events per window before the current silence.
      recent: float32 events in the last ``recent_windows`` windows.
      expected_recent: float32 what the earlier rate predicts for them.
      trend: float32 least-squares slope of counts over the recent windows.
      period, period_strength: float32 dominant period (windows) and its strength.
      last_active: int32 index of the last active window (-1 = never).
      degree_threshold: ``(users,)`` float32 the user's adaptive F threshold.
      degree_alarm: ``(users,)`` bool F(u, t) above it.
    """

    state: Array
    silence: Array
    silence_limit: Array
    rate: Array
    recent: Array
    expected_recent: Array
    trend: Array
    period: Array
    period_strength: Array
    last_active: Array
    degree_threshold: Array
    degree_alarm: Array


def detector_init(num_users: int, num_interests: int, buffer_windows: int = 64) -> DetectorState:
    """The state before any window: nothing seen, every interest ``none``."""
    shape = (num_users, num_interests)
    zeros_i = jnp.zeros(shape, jnp.int32)
    return DetectorState(
        buffer=activity_buffer_init(buffer_windows, shape),
        window=jnp.zeros((), jnp.int32),
        total=jnp.zeros(shape, jnp.float32),
        alive=zeros_i,
        active_windows=zeros_i,
        silence=zeros_i,
        longest_gap=zeros_i,
        since_return=jnp.full(shape, jnp.iinfo(jnp.int32).max // 2, jnp.int32),
        last_active=jnp.full(shape, _NEVER, jnp.int32),
        state=jnp.zeros(shape, jnp.int8),
        degree_moments=running_moments_init((num_users,)),
    )


def event_counts(user: ArrayLike, interest: ArrayLike, num_users: int, num_interests: int) -> Array:
    """``(users, K)`` float32 number of events per (user, interest) in a window.

    Rows with ``user >= num_users`` (padding) or ``interest >= K`` (no
    category) are dropped.
    """
    out = jnp.zeros((num_users, num_interests), jnp.float32)
    return out.at[jnp.asarray(user), jnp.asarray(interest)].add(1.0, mode="drop")


def poisson_cdf(k: ArrayLike, mean: ArrayLike) -> Array:
    """P(X <= k) for X ~ Poisson(mean), elementwise; 1 where mean <= 0."""
    k = jnp.floor(jnp.asarray(k, jnp.float32))
    mean = jnp.asarray(mean, jnp.float32)
    return jnp.where(mean > 0, gammaincc(k + 1.0, jnp.maximum(mean, 1e-30)), 1.0)


def silence_limit(
    alive_before: ArrayLike,
    active_windows: ArrayLike,
    rate: ArrayLike,
    expected_gap: ArrayLike,
    params: DetectorParams,
) -> Array:
    """``s*``: silent windows after which the silence test fires (int32, >= 1).

    Args:
      alive_before: windows from first activity to the last active one.
      active_windows: windows with activity among them.
      rate: events per window over them.
      expected_gap: longest silence the interest is known to come back from.
    """
    alive_before = jnp.asarray(alive_before, jnp.float32)
    silent_before = alive_before - jnp.asarray(active_windows, jnp.float32)
    share = (silent_before + params.prior_silent) / (alive_before + params.prior_active + params.prior_silent)
    p_silent = jnp.clip(jnp.maximum(share, jnp.exp(-jnp.asarray(rate, jnp.float32))), 1e-6, 1.0 - 1e-6)
    by_chance = jnp.ceil(jnp.log(jnp.asarray(params.false_alarm, jnp.float32)) / jnp.log(p_silent) - 1e-4)
    by_gap = jnp.ceil(params.gap_factor * jnp.asarray(expected_gap, jnp.float32) - 1e-4)
    return jnp.clip(jnp.maximum(by_chance, by_gap), 1, jnp.iinfo(jnp.int32).max // 2).astype(jnp.int32)


def detector_update(
    state: DetectorState,
    counts: ArrayLike,
    degree: ArrayLike | None = None,
    params: DetectorParams = DetectorParams(),
) -> tuple[DetectorState, DetectorOutput]:
    """Close one window for every (user, interest).

    Args:
      state: the detector state after window t-1.
      counts: ``(users, K)`` events of each (user, interest) in window t.
      degree: optional ``(users,)`` F(u, t), for the per-user F alarm.
      params: the knobs.

    Returns:
      ``(state after window t, DetectorOutput of window t)``.
    """
    counts = jnp.asarray(counts, jnp.float32)
    active = counts > 0
    was_seen = state.alive > 0
    alive = state.alive + (was_seen | active)
    silence = jnp.where(active, 0, state.silence + was_seen)
    came_back = active & (state.silence > 0)
    longest_gap = jnp.where(came_back, jnp.maximum(state.longest_gap, state.silence), state.longest_gap)
    active_windows = state.active_windows + active
    total = state.total + counts
    last_active = jnp.where(active, state.window, state.last_active)
    buffer = activity_buffer_update(state.buffer, counts)

    # Time-series features over the ring buffer, oldest window first.
    series = activity_buffer_ordered(buffer)  # (T, users, K)
    length = series.shape[0]
    age = jnp.arange(length - 1, -1, -1, dtype=jnp.int32).reshape(length, 1, 1)  # 0 = this window
    lived = age < alive[None]
    recent_mask = lived & (age < jnp.asarray(params.recent_windows, jnp.int32))
    recent = jnp.sum(series * recent_mask, axis=0)
    recent_n = jnp.sum(recent_mask, axis=0).astype(jnp.float32)
    trend = trend_slope(series, recent_mask)
    period, strength = dominant_period(series, lived)
    periodic = (strength >= params.min_strength) & (alive >= 2 * period)

    alive_before = alive - silence
    rate = total / jnp.maximum(alive_before, 1).astype(jnp.float32)
    expected_gap = jnp.maximum(longest_gap, jnp.where(periodic, period - 1.0, 0.0))
    limit = jnp.where(alive > 0, silence_limit(alive_before, active_windows, rate, expected_gap, params), 0)

    # Drop test: the recent windows against the rate before them.
    earlier_n = alive.astype(jnp.float32) - recent_n
    earlier_rate = jnp.maximum(total - recent, 0.0) / jnp.maximum(earlier_n, 1.0)
    expected_recent = earlier_rate * recent_n
    enough = earlier_n >= params.min_history
    dropped = (
        enough
        & ~periodic
        & ~active
        & (recent <= params.forgotten_ratio * expected_recent)
        & (poisson_cdf(recent, expected_recent) < params.false_alarm)
    )
    forgotten_now = was_seen & ((silence >= limit) | dropped)
    # Declining: half-way to the silence limit, or a drop at the looser level
    # sqrt(false_alarm), so Poisson noise alone rarely flips an interest.
    half_silent = (silence > 0) & (silence >= jnp.ceil(limit / 2.0))
    sagging = (
        enough
        & ~periodic
        & (trend <= 0)
        & (recent < params.declining_ratio * expected_recent)
        & (poisson_cdf(recent, expected_recent) < jnp.sqrt(jnp.asarray(params.false_alarm, jnp.float32)))
    )
    declining_now = half_silent | sagging

    prev = state.state
    since_return = jnp.where((prev == FORGOTTEN) & active, 0, state.since_return + 1)
    level = jnp.where(declining_now, DECLINING, ACTIVE)
    young_new = (prev == NEW) & (alive <= params.new_windows)
    young_back = (prev == REACTIVATED) & (since_return < params.new_windows)
    ongoing = jnp.where(
        forgotten_now, FORGOTTEN, jnp.where(young_new, NEW, jnp.where(young_back, REACTIVATED, level))
    )
    code = jnp.where(
        prev == NONE,
        jnp.where(active, NEW, NONE),
        jnp.where(prev == FORGOTTEN, jnp.where(active, REACTIVATED, FORGOTTEN), ongoing),
    ).astype(jnp.int8)

    # Per-user F alarm against the user's own history (before this window).
    started = jnp.any(alive > 0, axis=1)
    if degree is None:
        degree_value = jnp.zeros(started.shape, jnp.float32)
        threshold = jnp.full(started.shape, jnp.inf, jnp.float32)
        moments = state.degree_moments
    else:
        degree_value = jnp.asarray(degree, jnp.float32)
        threshold = adaptive_threshold(state.degree_moments, params.degree_z, fallback=params.degree_fallback)
        moments = running_moments_update(state.degree_moments, degree_value, started)
    alarm = started & (degree_value > threshold)

    new_state = DetectorState(
        buffer=buffer,
        window=state.window + 1,
        total=total,
        alive=alive,
        active_windows=active_windows,
        silence=silence,
        longest_gap=longest_gap,
        since_return=since_return,
        last_active=last_active,
        state=code,
        degree_moments=moments,
    )
    output = DetectorOutput(
        state=code,
        silence=silence,
        silence_limit=limit,
        rate=rate,
        recent=recent,
        expected_recent=expected_recent,
        trend=trend,
        period=period,
        period_strength=strength,
        last_active=last_active,
        degree_threshold=threshold,
        degree_alarm=alarm,
    )
    return new_state, output
