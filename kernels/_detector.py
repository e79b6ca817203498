"""Adaptive forgetting detection per (user, interest): an ``init``/``update`` pair.

Each window, for every (user, interest) at once, the detector asks whether
the interest's current silence or its recent drop is *unusual for this user
and this interest*, instead of comparing with one global threshold:

- **silence test**: the probability of the interest's current silence
  given its own history, the larger of two posterior predictives: events
  (rate ~ Gamma(prior_events + events, prior_windows + windows), so a short
  history leaves the rate uncertain and long silences plausible) and active
  windows (share ~ Beta(prior_active + active, prior_silent + silent), robust
  to bursts and to periodic interests, whose counts are not Poisson). The
  test fires when that probability is at most ``false_alarm``; the limit
  ``s*`` it implies is raised to ``ceil(gap_factor * expected_gap)``, where
  the expected gap is the longest silence the interest has already come back
  from, or its dominant period (periodogram over the ring buffer) when that
  period is strong: a user who comes back every five windows is not
  forgetting after four.
- **drop test** (slow fades, which keep silences short): the events of a
  recent span (at least ``recent_windows`` windows, long enough for about
  ``drop_events`` expected events) are far below what the interest's earlier
  rate predicts: ``recent <= forgotten_ratio * expected`` and, quasi-Poisson
  with the earlier windows' dispersion D, ``PoissonCDF(recent / D;
  expected / D) < false_alarm``. Skipped when the span is empty (a silence)
  and for strongly periodic interests.

States (``kernels.STATE_NAMES``): an interest is ``new`` for its first
``new_windows`` windows, ``reactivated`` for ``new_windows`` windows after
it comes back from ``forgotten``, ``forgotten`` when either test fires (and
stays so until activity), ``declining`` when its silence reached half of
``s*`` or its recent events fell below ``declining_ratio`` of the expected
ones with a trend <= 0, at the looser level ``sqrt(false_alarm)``; else
``active``.

Per user, ``F(u, t)`` is also compared with an adaptive threshold from the
user's own F history (``mean + degree_z * std``), reported as ``degree_alarm``.

Parameters are a ``DetectorParams`` pytree of scalars, so sweeping a knob
(the precision-recall curve) does not recompile.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.scipy.special import betaln, gammaincc
from jax.typing import ArrayLike

from ._states import ACTIVE, DECLINING, FORGOTTEN, NEW, NONE, REACTIVATED
from ._timeseries import (
    COUNT_MAX,
    ActivityBuffer,
    RunningMoments,
    activity_buffer_init,
    activity_buffer_update,
    adaptive_threshold,
    dominant_period,
    running_moments_init,
    running_moments_update,
    trend_slope,
)

_NEVER = -1  # last_active before any activity


class DetectorParams(NamedTuple):
    """Detector knobs (scalars; traced, so sweeps reuse one compilation).

    No defaults here: the one source of them is ``fgjax.config.DetectorConfig``
    (kernels do not depend on the fgjax package); ``DetectorConfig().kernel_params()``
    builds the default knobs.
    """

    false_alarm: ArrayLike  # per-window chance that a test fires on an interest that is not forgotten
    gap_factor: ArrayLike  # silence limit >= this times the expected gap
    min_strength: ArrayLike  # periodogram peak share that counts as periodic
    recent_windows: ArrayLike  # fewest windows of the drop test and of the trend
    drop_events: ArrayLike  # the recent span covers this many expected events (capped at T // 2 windows)
    forgotten_ratio: ArrayLike  # drop test: recent <= this share of the expected events
    declining_ratio: ArrayLike  # recent below this share with a negative trend: declining
    min_history: ArrayLike  # windows of history before the drop test may fire
    new_windows: ArrayLike  # windows an interest stays new / reactivated
    prior_events: ArrayLike  # Gamma prior on the event rate: events ...
    prior_windows: ArrayLike  # ... over windows
    prior_active: ArrayLike  # Beta prior on the share of active windows: active ...
    prior_silent: ArrayLike  # ... and silent windows
    degree_z: ArrayLike  # user F alarm: F > mean + degree_z * std of the user's own F
    degree_fallback: ArrayLike  # F alarm threshold before the user has two F values


class DetectorState(NamedTuple):
    """Per-(user, interest) detector state; shapes ``(users, K)`` unless noted.

    Attributes:
      buffer: ring buffer of the last T windows' counts, ``(users, K, T)`` uint8.
      window: ``()`` int32 windows closed so far.
      total: events since first activity (float32; each window's count saturated at 255 like the buffer).
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
      silence, silence_limit: int32 the current silence and its limit s* (0 if never active;
        None unless asked for with ``with_limits``).
      rate: float32 events per window before the current silence.
      recent: float32 events in the last ``recent_windows`` windows.
      expected_recent: float32 what the earlier rate predicts for them.
      trend: float32 least-squares slope of counts over the recent windows.
      period, period_strength: float32 dominant period (windows; 0 = none: its strength is below
        ``min_strength`` or fewer than two cycles fit in the windows seen) and the periodogram peak's strength.
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
    # Distinct buffers for every field: the state is donated to jitted steps.
    return DetectorState(
        buffer=activity_buffer_init(buffer_windows, shape),
        window=jnp.zeros((), jnp.int32),
        total=jnp.zeros(shape, jnp.float32),
        alive=jnp.zeros(shape, jnp.int32),
        active_windows=jnp.zeros(shape, jnp.int32),
        silence=jnp.zeros(shape, jnp.int32),
        longest_gap=jnp.zeros(shape, jnp.int32),
        since_return=jnp.full(shape, jnp.iinfo(jnp.int32).max // 2, jnp.int32),
        last_active=jnp.full(shape, _NEVER, jnp.int32),
        state=jnp.zeros(shape, jnp.int8),
        degree_moments=running_moments_init((num_users,)),
    )


def event_counts(user: ArrayLike, interest: ArrayLike, num_users: int, num_interests: int) -> Array:
    """``(users, K)`` float32 number of events per (user, interest) in a window.

    Rows with ``user >= num_users`` or ``< 0`` (padding) or ``interest >= K``
    or ``< 0`` (no category) are dropped.
    """
    user, interest = jnp.asarray(user), jnp.asarray(interest)
    # Negative indices would wrap around (NumPy style): send them out of range instead.
    user = jnp.where(user < 0, num_users, user)
    interest = jnp.where(interest < 0, num_interests, interest)
    out = jnp.zeros((num_users, num_interests), jnp.float32)
    return out.at[user, interest].add(1.0, mode="drop")


def poisson_cdf(k: ArrayLike, mean: ArrayLike) -> Array:
    """P(X <= k) for X ~ Poisson(mean), elementwise; 1 where mean <= 0."""
    k = jnp.floor(jnp.asarray(k, jnp.float32))
    mean = jnp.asarray(mean, jnp.float32)
    return jnp.where(mean > 0, gammaincc(k + 1.0, jnp.maximum(mean, 1e-30)), 1.0)


def count_dispersion(series: ArrayLike, valid: ArrayLike) -> Array:
    """Index of dispersion ``max(1, var / mean)`` of counts ``(..., T)`` over ``valid`` windows.

    1 (Poisson) with fewer than two valid windows or a zero mean.
    """
    y = jnp.asarray(series, jnp.float32)
    m = jnp.asarray(valid, jnp.float32) * jnp.ones_like(y)
    n = m.sum(-1)
    mean = (m * y).sum(-1) / jnp.maximum(n, 1.0)
    var = (m * (y - mean[..., None]) ** 2).sum(-1) / jnp.maximum(n - 1.0, 1.0)
    ratio = jnp.where((n >= 2) & (mean > 0), var / jnp.where(mean > 0, mean, 1.0), 1.0)
    return jnp.maximum(ratio, 1.0)


def log_silence_probability(
    silence: ArrayLike,
    events: ArrayLike,
    exposure: ArrayLike,
    active_windows: ArrayLike,
    silent_windows: ArrayLike,
    params: DetectorParams,
    periodic: ArrayLike = False,
) -> Array:
    """log P(``silence`` more empty windows | the interest's history), the larger of two models.

    - Events: rate ~ Gamma(prior_events + events, prior_windows + exposure),
      predictive ``(b / (b + s)) ** a`` (negative binomial: an uncertain rate
      from a short history makes long silences plausible).
    - Windows: each window active with probability ~ Beta(prior_active +
      active_windows, prior_silent + silent_windows), predictive of s silent
      windows in a row (beta-binomial): robust to bursts and to irregular
      interests, whose event counts are far from Poisson. Not used where
      ``periodic``: their silences are judged against the period instead
      (the gap term of ``silence_limit``), since independent windows cannot
      express "every sixth window, like clockwork".

    Args (all ``(...)``; the first active window is excluded by the caller):
      silence: s, windows without activity.
      events, exposure: events and windows of history.
      active_windows, silent_windows: windows with and without activity in it.
    """
    s = jnp.asarray(silence, jnp.float32)
    a = params.prior_events + jnp.asarray(events, jnp.float32)
    b = params.prior_windows + jnp.asarray(exposure, jnp.float32)
    by_events = a * (jnp.log(b) - jnp.log(b + s))
    on = params.prior_active + jnp.asarray(active_windows, jnp.float32)
    off = params.prior_silent + jnp.asarray(silent_windows, jnp.float32)
    # log B(off + s, on) - log B(off, on); betaln stays accurate in float32 where a
    # difference of four gammaln values of thousands would not.
    by_windows = betaln(off + s, on) - betaln(off, on)
    return jnp.where(jnp.asarray(periodic, bool), by_events, jnp.maximum(by_events, by_windows))


def silence_limit(
    events: ArrayLike,
    exposure: ArrayLike,
    active_windows: ArrayLike,
    silent_windows: ArrayLike,
    expected_gap: ArrayLike,
    params: DetectorParams,
    periodic: ArrayLike = False,
    *,
    max_limit: int = 1 << 16,
    gap_limit: ArrayLike | None = None,
) -> Array:
    """``s*``: the fewest silent windows that the silence test calls forgotten (int32, >= 1).

    The smallest s with ``log_silence_probability(s) <= log(false_alarm)``
    (found by bisection: the probability falls with s), raised to
    ``ceil(gap_factor * expected_gap)``; capped at ``max_limit``.
    """
    log_q = jnp.log(jnp.asarray(params.false_alarm, jnp.float32))
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in (events, exposure, active_windows, silent_windows)))

    def unlikely(s):
        return log_silence_probability(s, events, exposure, active_windows, silent_windows, params, periodic) <= log_q

    lo = jnp.zeros(shape, jnp.float32)  # not unlikely (0 silent windows never is)
    hi = jnp.full(shape, float(max_limit), jnp.float32)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = jnp.floor((lo + hi) / 2.0)
        found = unlikely(mid)
        return jnp.where(found, lo, mid), jnp.where(found, mid, hi)

    _, by_chance = lax.fori_loop(0, max_limit.bit_length(), bisect, (lo, hi))
    by_gap = jnp.ceil(params.gap_factor * jnp.asarray(expected_gap, jnp.float32) - 1e-4) if gap_limit is None else gap_limit
    return jnp.clip(jnp.maximum(by_chance, by_gap), 1, max_limit).astype(jnp.int32)


class SilenceModel(NamedTuple):
    """The silence test's inputs per (user, interest), from the detector's counters.

    The first active window is given (it starts the history), so it is left out.
    """

    events: Array
    exposure: Array
    active_windows: Array
    silent_windows: Array
    gap_limit: Array  # ceil(gap_factor * expected gap): silences shorter than this never fire
    periodic: Array


def silence_model(
    total: ArrayLike, alive: ArrayLike, silence: ArrayLike, active_windows: ArrayLike, longest_gap: ArrayLike,
    period: ArrayLike, period_strength: ArrayLike, params: DetectorParams, buffer_windows: int,
) -> SilenceModel:
    """``SilenceModel`` from the counters after a window (elementwise, any shape).

    A period counts when it is strong and at least two cycles fit in the
    windows the periodogram saw (``min(alive, buffer_windows)``): past 2T
    windows of history, a trend would otherwise pass as a cycle of period T.
    """
    alive = jnp.asarray(alive)
    alive_before = alive - jnp.asarray(silence)
    active_windows = jnp.asarray(active_windows)
    period = jnp.asarray(period, jnp.float32)
    periodic = (
        (period >= 2.0)  # 0 = no period (the evidence reports 0 where the period does not count)
        & (jnp.asarray(period_strength) >= params.min_strength)
        & (jnp.minimum(alive, buffer_windows) >= 2 * period)
    )
    expected_gap = jnp.maximum(jnp.asarray(longest_gap, jnp.float32), jnp.where(periodic, period - 1.0, 0.0))
    return SilenceModel(
        events=jnp.maximum(jnp.asarray(total, jnp.float32) - 1.0, 0.0),
        exposure=jnp.maximum(alive_before - 1, 0),
        active_windows=jnp.maximum(active_windows - 1, 0),
        silent_windows=alive_before - active_windows,
        gap_limit=jnp.ceil(params.gap_factor * expected_gap - 1e-4),
        periodic=periodic,
    )


def silence_is_unusual(silence: ArrayLike, model: SilenceModel, params: DetectorParams) -> Array:
    """``silence >= s*`` without computing s*: one probability, and the gap term.

    s* is the smallest s >= 1 with P(s) <= false_alarm, raised to the gap
    term, and P falls with s, so ``silence >= s*`` iff ``silence >= 1``,
    ``P(silence) <= false_alarm`` and ``silence >= gap_limit``.
    """
    s = jnp.asarray(silence)
    log_p = log_silence_probability(
        s, model.events, model.exposure, model.active_windows, model.silent_windows, params, model.periodic
    )
    return (s >= 1) & (log_p <= jnp.log(jnp.asarray(params.false_alarm, jnp.float32))) & (s >= model.gap_limit)


def model_silence_limit(model: SilenceModel, params: DetectorParams) -> Array:
    """s* of a ``SilenceModel`` (int32; the bisection of ``silence_limit``)."""
    return silence_limit(
        model.events, model.exposure, model.active_windows, model.silent_windows, 0.0, params, model.periodic,
        gap_limit=model.gap_limit,
    )


class _Block(NamedTuple):
    """One block of users' per-(user, interest) inputs to the judgment, ``(B, K)`` each."""

    counts: Array
    alive: Array
    silence: Array
    total: Array
    active_windows: Array
    longest_gap: Array
    since_return: Array
    previous: Array  # int8 codes before the window


def _judge(series: Array, b: _Block, params: DetectorParams, with_limits: bool) -> dict[str, Array]:
    """The time-series features, both tests and the state machine for one block.

    Args:
      series: ``(B, K, T)`` float32 counts of the block's last T windows, oldest first.
    """
    length = series.shape[-1]
    active = b.counts > 0
    age = jnp.arange(length - 1, -1, -1, dtype=jnp.int32)  # 0 = this window
    lived = age < b.alive[..., None]
    alive_before = b.alive - b.silence
    rate = b.total / jnp.maximum(alive_before, 1).astype(jnp.float32)
    # The recent span holds about drop_events expected events at the interest's
    # rate, so the drop test has the same power for rare and frequent interests.
    span = jnp.clip(jnp.ceil(params.drop_events / jnp.maximum(rate, 1e-3)), params.recent_windows, length // 2)
    recent_mask = lived & (age < span.astype(jnp.int32)[..., None])
    recent = jnp.sum(series * recent_mask, axis=-1)
    recent_n = jnp.sum(recent_mask, axis=-1).astype(jnp.float32)
    trend = trend_slope(series, recent_mask)
    period, strength = dominant_period(series, lived)
    model = silence_model(b.total, b.alive, b.silence, b.active_windows, b.longest_gap, period, strength, params, length)
    periodic = model.periodic
    # The first active window is given (it starts the history), so it is left out.
    limit = jnp.where(b.alive > 0, model_silence_limit(model, params), 0) if with_limits else None

    # Drop test: the recent windows against the rate before them.
    # The first event is given (it starts the history) and left out, and the
    # earlier history must be at least as long as the recent span.
    earlier_n = b.alive.astype(jnp.float32) - recent_n
    earlier_rate = jnp.maximum(b.total - recent - 1.0, 0.0) / jnp.maximum(earlier_n, 1.0)
    expected_recent = earlier_rate * recent_n
    enough = (earlier_n >= params.min_history) & (earlier_n >= recent_n)
    # Quasi-Poisson: bursty and periodic counts vary far more than Poisson
    # ones, so both sides are divided by the earlier windows' dispersion.
    dispersion = count_dispersion(series, lived & ~recent_mask)
    drop_tail = poisson_cdf(recent / dispersion, expected_recent / dispersion)
    dropped = (
        enough
        & ~periodic
        & ~active
        & (recent > 0)  # an empty span is a silence: the silence test judges it
        & (recent <= params.forgotten_ratio * expected_recent)
        & (drop_tail < params.false_alarm)
    )
    forgotten_now = (b.alive > 0) & (silence_is_unusual(b.silence, model, params) | dropped)
    # Declining: half-way to the silence limit, or a drop at the looser level
    # sqrt(false_alarm), so Poisson noise alone rarely flips an interest.
    # silence >= ceil(s* / 2) iff 2 * silence >= s*.
    half_silent = (b.silence > 0) & silence_is_unusual(2 * b.silence, model, params)
    sagging = (
        enough
        & ~periodic
        & (trend <= 0)
        & (recent < params.declining_ratio * expected_recent)
        & (drop_tail < jnp.sqrt(jnp.asarray(params.false_alarm, jnp.float32)))
    )
    declining_now = half_silent | sagging

    prev = b.previous
    since_return = jnp.where((prev == FORGOTTEN) & active, 0, b.since_return + 1)
    level = jnp.where(declining_now, DECLINING, ACTIVE)
    young_new = (prev == NEW) & (b.alive <= params.new_windows)
    young_back = (prev == REACTIVATED) & (since_return < params.new_windows)
    ongoing = jnp.where(
        forgotten_now, FORGOTTEN, jnp.where(young_new, NEW, jnp.where(young_back, REACTIVATED, level))
    )
    code = jnp.where(
        prev == NONE,
        jnp.where(active, NEW, NONE),
        jnp.where(prev == FORGOTTEN, jnp.where(active, REACTIVATED, FORGOTTEN), ongoing),
    ).astype(jnp.int8)
    return {
        "state": code, "since_return": since_return, "rate": rate, "recent": recent,
        "expected_recent": expected_recent, "trend": trend,
        # The period is evidence only where it counts: 0 = none (weak, or fewer than two cycles seen).
        "period": jnp.where(periodic, period, 0.0), "period_strength": strength,
    } | ({"silence_limit": limit} if with_limits else {})


def detector_update(
    state: DetectorState,
    counts: ArrayLike,
    degree: ArrayLike | None,
    params: DetectorParams,
    *,
    user_block: int | None = None,
    with_limits: bool = True,
) -> tuple[DetectorState, DetectorOutput]:
    """Close one window for every (user, interest).

    Args:
      state: the detector state after window t-1.
      counts: ``(users, K)`` events of each (user, interest) in window t.
      degree: ``(users,)`` F(u, t) for the per-user F alarm, or None (no alarm).
      params: the knobs (``fgjax.config.DetectorConfig.kernel_params()`` gives the defaults).
      user_block: judge this many users at a time (a ``fori_loop`` over
        blocks) so the features' temporaries, about 2 KB per (user,
        interest) at T = 64, are bounded by a block instead of growing with
        the users; None = all at once. Results do not depend on it.
      with_limits: also compute ``silence_limit`` (s*, by bisection: about 17
        probability evaluations per (user, interest), most of the update's
        arithmetic). The states never need it (two evaluations decide them);
        without it the output's ``silence_limit`` is None, and
        ``model_silence_limit`` gives it for the rows that need it.

    Returns:
      ``(state after window t, DetectorOutput of window t)``.
    """
    counts = jnp.asarray(counts, jnp.float32)
    num_users = counts.shape[0]
    active = counts > 0
    was_seen = state.alive > 0
    alive = state.alive + (was_seen | active)
    silence = jnp.where(active, 0, state.silence + was_seen)
    # A silence that ended in forgotten is a pause, not a gap the interest is
    # known to come back from: it must not stretch the next silence limit.
    came_back = active & (state.silence > 0) & (state.state != FORGOTTEN)
    longest_gap = jnp.where(came_back, jnp.maximum(state.longest_gap, state.silence), state.longest_gap)
    active_windows = state.active_windows + active
    # Saturated like the ring buffer, so the drop test compares like with like.
    total = state.total + jnp.minimum(counts, COUNT_MAX)
    last_active = jnp.where(active, state.window, state.last_active)
    buffer = activity_buffer_update(state.buffer, counts)
    length = buffer.counts.shape[-1]
    block = _Block(counts, alive, silence, total, active_windows, longest_gap, state.since_return, state.state)

    def judge(start, size):
        rows = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size, axis=0), block)
        raw = lax.dynamic_slice_in_dim(buffer.counts, start, size, axis=0)  # (size, K, T) uint8
        # Oldest window first: after w windows the oldest slot is w % T.
        series = jnp.roll(raw, -(buffer.windows % length), axis=-1).astype(jnp.float32)
        return _judge(series, rows, params, with_limits)

    size = num_users if user_block is None else min(user_block, num_users)
    if size == num_users:
        judged = judge(0, num_users)
    else:
        shapes = jax.eval_shape(lambda: judge(0, size))
        init = {name: jnp.zeros((num_users, *s.shape[1:]), s.dtype) for name, s in shapes.items()}

        def body(i, acc):
            # The last block may overlap the one before: those users are judged twice, identically.
            start = jnp.minimum(i * size, num_users - size)
            part = judge(start, size)
            return {name: lax.dynamic_update_slice_in_dim(acc[name], part[name], start, axis=0) for name in acc}

        judged = lax.fori_loop(0, -(-num_users // size), body, init)
    code = judged["state"]

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
        since_return=judged["since_return"],
        last_active=last_active,
        state=code,
        degree_moments=moments,
    )
    output = DetectorOutput(
        state=code,
        silence=silence,
        silence_limit=judged.get("silence_limit"),
        rate=judged["rate"],
        recent=judged["recent"],
        expected_recent=judged["expected_recent"],
        trend=judged["trend"],
        period=judged["period"],
        period_strength=judged["period_strength"],
        last_active=last_active,
        degree_threshold=threshold,
        degree_alarm=alarm,
    )
    return new_state, output
