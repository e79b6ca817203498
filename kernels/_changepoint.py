"""Change-point anchors for forgetting detection, vectorized over (user, interest).

Two textbook detectors the adaptive one is measured against
(``fgjax.evaluation.matrix``), each an ``init`` / ``update`` pair over any
leading shape ``(...)`` (usually ``(users, K)``), pure ``jax.numpy``:

- **BOCPD** (Adams & MacKay 2007, "Bayesian online changepoint detection")
  with a Poisson-Gamma model: the posterior over the run length (windows
  since the last change) is carried as a vector truncated at ``R`` run
  lengths (the longest one absorbs the tail), with each run length's
  sufficient statistics (its events and windows). Each window multiplies
  every run length's mass by the negative-binomial predictive of the
  window's count, moves ``hazard`` of it to run length 0 and renormalizes.
  The interest is called forgotten when the posterior mass of a change
  inside its current silence (run length <= silence) reaches
  ``bocpd_threshold``; activity ends it (``sticky_alarms``).
- **CUSUM** (Page 1954) for a drop of the event rate to ``ratio`` times its
  rate ``lambda0`` (events per window before the current silence), quasi-Poisson (divided by the counts' dispersion):
  ``S = max(0, S + (lambda0 (1 - ratio) + x log ratio) / D)``, forgotten
  from ``S >= cusum_threshold`` until activity (``sticky_alarms``).

Each update returns a score per (user, interest); the thresholds apply
afterwards (``sticky_alarms``), so a sweep over them runs the update once. Their values come from ``fgjax.config.EvaluateConfig``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from ._special import lgamma


class ChangepointParams(NamedTuple):
    """Knobs of both anchors (scalars); their thresholds apply afterwards (``sticky_alarms``)."""

    hazard: ArrayLike  # BOCPD: prior chance of a change per window
    prior_events: ArrayLike  # BOCPD: Gamma prior of a new segment's rate: events ...
    prior_windows: ArrayLike  # ... over windows
    ratio: ArrayLike  # CUSUM: the rate drop it looks for (a share of lambda0)


class BocpdState(NamedTuple):
    """``(..., R)`` run-length posterior and each run length's events and windows; ``(...)`` counters."""

    prob: Array
    events: Array
    windows: Array
    seen: Array  # bool: the interest has had an event
    silence: Array  # int32 windows since its last event


def bocpd_init(shape: tuple[int, ...], run_lengths: int) -> BocpdState:
    prob = jnp.zeros((*shape, run_lengths), jnp.float32).at[..., 0].set(1.0)
    return BocpdState(
        prob=prob,
        events=jnp.zeros((*shape, run_lengths), jnp.float32),
        windows=jnp.zeros((*shape, run_lengths), jnp.float32),
        seen=jnp.zeros(shape, bool),
        silence=jnp.zeros(shape, jnp.int32),
    )


def bocpd_update(state: BocpdState, counts: ArrayLike, params: ChangepointParams) -> tuple[BocpdState, Array]:
    """One window of counts ``(...)``; returns the new state and the ``(...)`` posterior mass of a change
    inside the current silence (0 in an active window or before the first event)."""
    x = jnp.asarray(counts, jnp.float32)[..., None]
    active = x[..., 0] > 0
    seen = state.seen | active
    a = params.prior_events + state.events
    b = params.prior_windows + state.windows
    # Negative-binomial predictive of x under each run length's Gamma posterior.
    log_pred = lgamma(a + x) - lgamma(a) - lgamma(x + 1.0) + a * jnp.log(b / (b + 1.0)) - x * jnp.log(b + 1.0)
    joint = state.prob * jnp.exp(log_pred - log_pred.max(-1, keepdims=True))
    change = params.hazard * joint.sum(-1)
    grown = joint * (1.0 - params.hazard)
    # Run length r -> r + 1; the longest keeps its mass and absorbs the one before it.
    prob = jnp.concatenate([change[..., None], grown[..., :-2], grown[..., -2:].sum(-1, keepdims=True)], axis=-1)
    prob = prob / jnp.maximum(prob.sum(-1, keepdims=True), 1e-30)
    events = jnp.concatenate([jnp.zeros_like(x), state.events[..., :-2] + x, state.events[..., -1:] + x], axis=-1)
    windows = jnp.concatenate([jnp.zeros_like(x), state.windows[..., :-2] + 1.0, state.windows[..., -1:] + 1.0],
                              axis=-1)
    # Before the first event there is nothing to forget: the posterior starts at the first event.
    fresh = ~state.seen & active
    start = jnp.zeros_like(prob).at[..., 1].set(1.0)
    prob = jnp.where(fresh[..., None], start, jnp.where(seen[..., None], prob, state.prob))
    events = jnp.where(fresh[..., None], jnp.zeros_like(events).at[..., 1].set(x[..., 0]),
                       jnp.where(seen[..., None], events, state.events))
    windows = jnp.where(fresh[..., None], jnp.zeros_like(windows).at[..., 1].set(1.0),
                        jnp.where(seen[..., None], windows, state.windows))
    silence = jnp.where(active, 0, state.silence + seen)
    r = jnp.arange(prob.shape[-1])
    inside = jnp.where(seen & (silence > 0), jnp.sum(prob * (r <= silence[..., None]), axis=-1), 0.0)
    return BocpdState(prob, events, windows, seen, silence), inside


class CusumState(NamedTuple):
    """``(...)`` each: the statistic, the counts' moments since the first event, the current silence."""

    stat: Array
    n: Array
    mean: Array
    m2: Array
    silence: Array
    seen: Array


def cusum_init(shape: tuple[int, ...]) -> CusumState:
    z = lambda: jnp.zeros(shape, jnp.float32)  # noqa: E731
    return CusumState(z(), z(), z(), z(), z(), jnp.zeros(shape, bool))


def cusum_update(state: CusumState, counts: ArrayLike, params: ChangepointParams) -> tuple[CusumState, Array]:
    """One window of counts ``(...)``; returns the new state and the ``(...)`` statistic (0 in an active window).

    lambda0 is the mean count of the windows before the current silence
    since the first event; D their index of dispersion (>= 1).
    """
    x = jnp.asarray(counts, jnp.float32)
    active = x > 0
    seen = state.seen | active
    n, mean, m2 = state.n, state.mean, state.m2
    lambda0 = mean * n / jnp.maximum(n - state.silence, 1.0)
    var = m2 / jnp.maximum(n - 1.0, 1.0)
    dispersion = jnp.where((n >= 2) & (mean > 0), jnp.maximum(var / jnp.maximum(mean, 1e-6), 1.0), 1.0)
    ratio = jnp.asarray(params.ratio, jnp.float32)
    step = (lambda0 * (1.0 - ratio) + x * jnp.log(ratio)) / dispersion
    stat = jnp.where(seen & (n >= 1), jnp.maximum(state.stat + step, 0.0), 0.0)
    take = seen.astype(jnp.float32)
    n2 = n + take
    delta = take * (x - mean)
    mean2 = mean + delta / jnp.maximum(n2, 1.0)
    m2b = m2 + delta * (x - mean2)
    silence = jnp.where(active, 0.0, state.silence + seen)
    return CusumState(stat, n2, mean2, m2b, silence, seen), jnp.where(active, 0.0, stat)


def sticky_alarms(score: ArrayLike, threshold: ArrayLike) -> Array:
    """``(windows, ...)`` bool forgotten: from the window a score reaches ``threshold`` until the next
    active window (a score of 0 marks one), as the detector's ``forgotten`` state holds."""
    score = jnp.asarray(score)

    def step(held, s):
        now = (s > 0) & (held | (s >= threshold))
        return now, now

    _, out = lax.scan(step, jnp.zeros(score.shape[1:], bool), score)
    return out
