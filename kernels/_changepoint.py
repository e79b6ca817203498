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
  ``threshold``; activity ends it (reactivated).
- **CUSUM** (Page 1954) for a drop of the event rate to ``ratio`` times its
  rate ``lambda0`` (events per window before the current silence), quasi-Poisson (divided by the counts' dispersion):
  ``S = max(0, S + (lambda0 (1 - ratio) + x log ratio) / D)``, forgotten at
  ``S >= threshold``. Activity that brings S back to 0 ends it; a return
  from forgotten restarts lambda0 from the new run.

Knobs are traced scalars (``ChangepointParams``), so sweeping a threshold
does not recompile. Their values come from ``fgjax.config.EvaluateConfig``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array
from jax.scipy.special import gammaln
from jax.typing import ArrayLike


class ChangepointParams(NamedTuple):
    """Knobs of both anchors (scalars)."""

    hazard: ArrayLike  # BOCPD: prior chance of a change per window
    prior_events: ArrayLike  # BOCPD: Gamma prior of a new segment's rate: events ...
    prior_windows: ArrayLike  # ... over windows
    bocpd_threshold: ArrayLike  # BOCPD: posterior mass of a change inside the silence that calls it forgotten
    ratio: ArrayLike  # CUSUM: the rate drop it looks for (a share of lambda0)
    cusum_threshold: ArrayLike  # CUSUM: S at which it calls forgotten


class BocpdState(NamedTuple):
    """``(..., R)`` run-length posterior and each run length's events and windows; ``(...)`` counters."""

    prob: Array
    events: Array
    windows: Array
    seen: Array  # bool: the interest has had an event
    silence: Array  # int32 windows since its last event
    forgotten: Array  # bool


def bocpd_init(shape: tuple[int, ...], run_lengths: int) -> BocpdState:
    prob = jnp.zeros((*shape, run_lengths), jnp.float32).at[..., 0].set(1.0)
    return BocpdState(
        prob=prob,
        events=jnp.zeros((*shape, run_lengths), jnp.float32),
        windows=jnp.zeros((*shape, run_lengths), jnp.float32),
        seen=jnp.zeros(shape, bool),
        silence=jnp.zeros(shape, jnp.int32),
        forgotten=jnp.zeros(shape, bool),
    )


def bocpd_update(state: BocpdState, counts: ArrayLike, params: ChangepointParams) -> tuple[BocpdState, Array]:
    """One window of counts ``(...)``; returns the new state and ``(...)`` bool forgotten."""
    x = jnp.asarray(counts, jnp.float32)[..., None]
    active = x[..., 0] > 0
    seen = state.seen | active
    a = params.prior_events + state.events
    b = params.prior_windows + state.windows
    # Negative-binomial predictive of x under each run length's Gamma posterior.
    log_pred = gammaln(a + x) - gammaln(a) - gammaln(x + 1.0) + a * jnp.log(b / (b + 1.0)) - x * jnp.log(b + 1.0)
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
    inside = jnp.sum(prob * (r <= silence[..., None]), axis=-1)
    forgotten = seen & (silence > 0) & (state.forgotten | (inside >= params.bocpd_threshold))
    return BocpdState(prob, events, windows, seen, silence, forgotten), forgotten


class CusumState(NamedTuple):
    """``(...)`` each: the statistic, the counts' moments since the first event (or the return), and the state."""

    stat: Array
    n: Array
    mean: Array
    m2: Array
    silence: Array
    seen: Array
    forgotten: Array


def cusum_init(shape: tuple[int, ...]) -> CusumState:
    z = lambda: jnp.zeros(shape, jnp.float32)  # noqa: E731
    return CusumState(z(), z(), z(), z(), z(), jnp.zeros(shape, bool), jnp.zeros(shape, bool))


def cusum_update(state: CusumState, counts: ArrayLike, params: ChangepointParams) -> tuple[CusumState, Array]:
    """One window of counts ``(...)``; returns the new state and ``(...)`` bool forgotten.

    lambda0 is the mean count of the windows before the current silence since
    the first event (or the return from forgotten, which restarts it).
    """
    x = jnp.asarray(counts, jnp.float32)
    active = x > 0
    seen = state.seen | active
    back = state.forgotten & active
    n, mean, m2 = (jnp.where(back, 0.0, v) for v in (state.n, state.mean, state.m2))
    # The moments run over every window since the first event; lambda0 leaves the silence out.
    lambda0 = mean * n / jnp.maximum(n - state.silence, 1.0)
    var = m2 / jnp.maximum(n - 1.0, 1.0)
    dispersion = jnp.where((n >= 2) & (mean > 0), jnp.maximum(var / jnp.maximum(mean, 1e-6), 1.0), 1.0)
    ratio = jnp.asarray(params.ratio, jnp.float32)
    step = (lambda0 * (1.0 - ratio) + x * jnp.log(ratio)) / dispersion
    stat = jnp.where(seen & (n >= 1) & ~back, jnp.maximum(state.stat + step, 0.0), 0.0)
    take = seen.astype(jnp.float32)
    n2 = n + take
    delta = take * (x - mean)
    mean2 = mean + delta / jnp.maximum(n2, 1.0)
    m2b = m2 + delta * (x - mean2)
    silence = jnp.where(active, 0.0, state.silence + seen)
    forgotten = seen & ~active & (state.forgotten | (stat >= params.cusum_threshold))
    return CusumState(stat, n2, mean2, m2b, silence, seen, forgotten), forgotten
