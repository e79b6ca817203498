"""The Bayes ceiling of forgetting detection on a synthetic story: what knowing the generator buys.

A detector sees counts and has to learn each interest's habits *and* tell when they changed. The oracle
here is told the habits: each pair's ``synthetic.TrueRates`` (its no-change mean on every day, with the
weekday profile, bursts, engaged days; hawkes' sessions and their excitation), its fade's floor and
half-life, and the story's priors (the kinds' shares, the law of the change day). It has to find only the
change, and does so exactly: per pair and day ``t``, the posterior probability that the interest is
*forgotten* by the end of day ``t`` given its series through day ``t``. The hypotheses, each weighted by
its prior:

- no change (``1 - stop_fraction - reactivate_fraction - fade_fraction``);
- a stop at day ``tau`` (``stop_fraction + reactivate_fraction``): the changeable mean is 0 from ``tau``
  (a pause is a stop until its return; after the return it is not forgotten, and the likelihood of any
  session then moves the posterior away from a stop);
- a fade from day ``tau`` (``fade_fraction``): the mean times ``floor + (1 - floor) * 0.5 ** ((days since
  tau + 1/2) / half_life)``;

with ``tau`` distributed as the stories draw it, ``start + max(1, floor((days - start) * U))``, ``U ~
Uniform(0.3, 0.8)``. Forgotten by ``t``: a stop with ``tau <= t``, or a fade whose rate is below the
definition's share by then (``detection.fade_forgotten_days``).

Raising an alarm once that posterior passes ``q``, with ``q`` chosen on the very cell it is scored on, is
an estimate of the best F1 any detector of the counts could reach there (the oracle knows more than the
counts: the rates, hawkes' latent sessions). It is an estimate, not a strict bound: the posterior is per
pair (engaged's churners stop together, which a user-level oracle could use), and a fixed threshold on a
posterior is not the only decision rule. All float64 NumPy, in chunks of pairs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fgjax.data.synthetic import TrueRates
from fgjax.evaluation.detection import fade_forgotten_days

CHANGE_AT = (0.3, 0.8)  # the stories' change day, as a share of the interest's remaining days (synthetic._CHANGE_AT)


def change_day_prior(start: np.ndarray, num_days: int, change_at: tuple[float, float] = CHANGE_AT) -> np.ndarray:
    """``(pairs, days)`` P(change on day tau): ``tau = start + max(1, floor((num_days - start) * U))``,
    ``U ~ Uniform(*change_at)``; rows sum to 1 (mass past the last day is dropped and the rest renormalised)."""
    start = np.asarray(start, np.int64)
    remaining = (num_days - start).astype(np.float64)[:, None]
    k = np.arange(num_days, dtype=np.float64)[None, :]  # floor(remaining * U) = k  <=>  U in [k, k + 1) / remaining
    lo, hi = change_at
    mass = np.clip(np.minimum((k + 1) / remaining, hi) - np.maximum(k / remaining, lo), 0.0, None) / (hi - lo)
    if num_days > 1:
        mass[:, 1] += mass[:, 0]  # max(1, .): a change never comes on the start day itself
    mass[:, 0] = 0.0
    prior = np.zeros((len(start), num_days))
    rows, offset = np.nonzero(mass)
    day = start[rows] + offset
    inside = day < num_days
    prior[rows[inside], day[inside]] = mass[rows[inside], offset[inside]]
    total = prior.sum(axis=1, keepdims=True)
    return np.where(total > 0, prior / np.where(total > 0, total, 1.0), 0.0)


def _log_poisson(observed: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """log P(observed | Poisson(mean)) up to the ``-log(observed!)`` every hypothesis shares; -inf where
    an event is seen at mean 0."""
    log_mean = np.log(np.where(mean > 0, mean, 1.0))
    return np.where((observed > 0) & (mean <= 0), -np.inf, observed * log_mean - mean)


def _window_sums(values: np.ndarray) -> np.ndarray:
    """``(n, tau, t)`` the sum of ``values[:, tau .. t]`` (``tau <= t``; 0 elsewhere), -inf where any is -inf.

    Cumulative sums of the finite parts and a count of the impossible days, so that no -inf is
    subtracted from another."""
    impossible = np.isneginf(values)
    finite = np.cumsum(np.where(impossible, 0.0, values), axis=1)
    count = np.cumsum(impossible, axis=1)
    zero = np.zeros((len(values), 1))
    finite_before = np.concatenate([zero, finite[:, :-1]], axis=1)
    count_before = np.concatenate([zero, count[:, :-1]], axis=1)
    sums = finite[:, None, :] - finite_before[:, :, None]
    return np.where(count[:, None, :] - count_before[:, :, None] > 0, -np.inf, sums)


def forgotten_posterior(
    rates: TrueRates, start: np.ndarray, fade_floor: np.ndarray, fade_half_life: np.ndarray,
    shares: Sequence[float], *, stop_prior: float, fade_prior: float, chunk: int = 128,
) -> dict[float, np.ndarray]:
    """P(forgotten by the end of day t | the series through day t), ``(pairs, days)`` per fade share.

    Args:
      rates: the pairs' ``TrueRates`` (``(pairs, days)`` each).
      start: ``(pairs,)`` each pair's first day (its change comes after it).
      fade_floor, fade_half_life: ``(pairs,)`` the fade a pair would follow.
      shares: fade definitions (a fade is forgotten below this share of its former rate).
      stop_prior, fade_prior: prior shares of pairs that stop (or pause) and that fade.
      chunk: pairs per step (memory: about 10 float64 ``(chunk, days, days)`` arrays).
    """
    observed = np.asarray(rates.observed, np.float64)
    base, excited = np.asarray(rates.base, np.float64), np.asarray(rates.excited, np.float64)
    pairs, days = observed.shape
    if not 0 <= stop_prior + fade_prior <= 1 or min(stop_prior, fade_prior) < 0:
        raise ValueError(f"stop_prior and fade_prior must be shares summing to at most 1, got {stop_prior}, "
                         f"{fade_prior}")
    with np.errstate(divide="ignore"):
        log_prior_tau = np.log(change_day_prior(start, days))  # -inf on the days a change never comes
    zero = lambda p: np.log(p) if p > 0 else -np.inf  # noqa: E731
    log_none, log_stop, log_fade = zero(1.0 - stop_prior - fade_prior), zero(stop_prior), zero(fade_prior)
    forgotten_after = {float(s): fade_forgotten_days(fade_floor, fade_half_life, float(s)) for s in shares}
    day = np.arange(days)
    tau, t = day[None, :, None], day[None, None, :]  # (1, tau, t)
    out = {s: np.zeros((pairs, days)) for s in forgotten_after}
    since = day[None, :] - day[:, None]  # (tau, u) days since the fade began
    since_index = np.where(since >= 0, since, days)  # before it: the table's last column, 1
    for first in range(0, pairs, chunk):
        rows = slice(first, min(pairs, first + chunk))
        x, b, e = observed[rows], base[rows], excited[rows]
        # Cumulative log-likelihoods through day t of "unchanged" and of "changeable mean 0".
        unchanged = np.cumsum(_log_poisson(x, b + e), axis=1)  # (n, t)
        before = np.concatenate([np.zeros((len(x), 1)), unchanged[:, :-1]], axis=1)  # through day tau - 1
        stop = before[:, :, None] + _window_sums(_log_poisson(x, e))  # (n, tau, t), tau <= t
        floor = np.asarray(fade_floor, np.float64)[rows][:, None]
        half_life = np.asarray(fade_half_life, np.float64)[rows][:, None]
        # The fade's multiplier depends on the days since it began only: one (n, days) table of it, read at
        # u - tau for every (tau, u) (the same float64 values as evaluating it there, at 1/days of the powers).
        table = floor + (1 - floor) * 0.5 ** ((day[None, :] + 0.5) / half_life)  # (n, days since)
        table = np.concatenate([table, np.ones((len(x), 1))], axis=1)  # ... and 1 before the fade: index days
        multiplier = table[:, since_index]  # (n, tau, u)
        fade = np.cumsum(_log_poisson(x[:, None, :], b[:, None, :] * multiplier + e[:, None, :]), axis=2)
        came = tau <= t  # the change has happened by day t (else that hypothesis is "unchanged" so far)
        prior = log_prior_tau[rows][:, :, None]
        log_w_stop = np.where(came, log_stop + prior + stop, -np.inf)
        log_w_fade = np.where(came, log_fade + prior + fade, -np.inf)
        # Changes still to come (tau > t) look unchanged through t.
        later = np.where(~came, np.exp(prior), 0.0).sum(axis=1)  # (n, t) prior mass of tau > t
        with np.errstate(divide="ignore"):
            log_unchanged = np.logaddexp(log_none, np.log(later) + np.logaddexp(log_stop, log_fade)) + unchanged
        top = np.maximum(np.maximum(log_w_stop.max(axis=1), log_w_fade.max(axis=1)), log_unchanged)
        top = np.where(np.isfinite(top), top, 0.0)
        w_stop, w_fade = np.exp(log_w_stop - top[:, None, :]), np.exp(log_w_fade - top[:, None, :])
        total = np.exp(log_unchanged - top) + w_stop.sum(axis=1) + w_fade.sum(axis=1)
        stopped_mass = w_stop.sum(axis=1)
        for share, after in forgotten_after.items():
            below = (day[None, :, None] + after[rows][:, None, None]) <= t  # the fade is past the definition by t
            mass = stopped_mass + np.where(below, w_fade, 0.0).sum(axis=1)
            out[share][rows] = np.where(total > 0, mass / np.where(total > 0, total, 1.0), 0.0)
    return out
