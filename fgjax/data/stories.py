"""Generative stories beside ``classic``, each unlike it and unlike each other.

A detector tuned on one way of making data can fail on another; these
stories are the other ways (``synthetic.story``; ``fgjax generate --set
synthetic.story=hawkes``). Each is ``(rng, config, catalog, num_users) ->
synthetic.StoryDraw``: the ground truth per (user, interest) and its events
per day, written by ``synthetic.generate`` like the classic log (same
catalog, event types, bad rows and ``ground_truth.parquet``).

Shared by the three: a user has ``min_interests .. max_interests``
categories; a pair's kind is ``fading`` / ``stopped`` / ``reactivated``
with ``synthetic.fade_fraction`` / ``stop_fraction`` / ``reactivate_fraction``
(else loyal); ``new_interest_fraction`` of the pairs start late (in the
first half); a change (stop, pause, fade start) comes at 30-80 % of the
pair's remaining days; a pause lasts ``pause_days_min .. pause_days_max``.
A fade multiplies the former rate by ``floor + (1 - floor) * 0.5 ** (days
since the change / half-life)``: whether it is ever *forgotten* depends on
the definition (``evaluate.fade_forgotten_share``, a share of the former
rate): a fade to a floor at or above it never is.

- ``seasonal``: per-user activity from a heavy-tailed Pareto law (tail index
  1.5: most users are light, a few are very heavy), each user with a weekday
  profile (flat, work week, or weekend: a weekend user is silent five days a
  week), Poisson counts; ``periodic_fraction`` of the pairs come one day in
  every ``period_days_min .. period_days_max`` (a monthly shopper); fades
  go to floors of 0, 2, 10, 30 or 50 % with half-lives of 3-14 days.
- ``hawkes``: self-exciting sessions. Sessions per day are Poisson with
  intensity ``mu + n (1 - beta) E`` where ``E`` sums the past sessions with
  weights ``beta ** (age - 1)`` (branching ratio n in 0.2-0.6, decay beta
  in 0.3-0.8 per day), and a session holds a geometric number of events
  (mean 1-2.5): clustered counts, far from Poisson, at ``HAWKES_RATE`` times
  the classic rate. Changes act on the
  immigrant rate ``mu``; what is already excited dies out on its own. Fades
  go to floors of 0, 5 or 20 %.
- ``engaged``: each user drifts between engaged and disengaged days (a
  two-state Markov chain: leaves with probability 0.03-0.12 a day, comes
  back with 0.25-0.6; disengaged days keep 0-15 % of the rate), so all of a
  user's interests go quiet together for a few days, which is not
  forgetting; ``ENGAGED_CHURN`` of the users leave for good (every interest
  ``stopped`` at the same day). Fades go to floors of 0, 5 or 30 %.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from fgjax.config import SyntheticConfig
from fgjax.data.synthetic import (
    FADING,
    PERIODIC,
    REACTIVATED,
    STABLE,
    STOPPED,
    StoryDraw,
    TrueRates,
    _Catalog,
    draw_interests,
    poisson_rates,
    start_epoch_us,
)

# Weekday profiles (Monday first), each averaging 1 over a week.
PROFILES = np.array([
    [1.0] * 7,  # flat
    [1.3] * 5 + [0.25] * 2,  # work week
    [0.28] * 5 + [2.8] * 2,  # weekend: quiet five days a week
])
PROFILE_SHARES = (0.4, 0.35, 0.25)
PARETO_INDEX = 1.5  # seasonal: per-user activity ~ Pareto(1.5), mean 1, capped
ACTIVITY_CAP = 20.0
SEASONAL_FLOORS = (0.0, 0.02, 0.1, 0.3, 0.5)
HAWKES_FLOORS = (0.0, 0.05, 0.2)
ENGAGED_FLOORS = (0.0, 0.05, 0.3)
HAWKES_RATE = 2.0  # hawkes: interests seen in sessions are busier (times events_per_interest_per_day)
ENGAGED_CHURN = 0.1  # engaged: share of users who leave for good (all their interests stop together)
_CHANGE_AT = (0.3, 0.8)


def _timeline(rng: np.random.Generator, config: SyntheticConfig, n: int):
    """Start, change and resume days of ``n`` pairs."""
    d = config.num_days
    late = rng.random(n) < config.new_interest_fraction
    start = np.minimum(np.where(late, rng.integers(1, max(2, d // 2), size=n), 0), d - 1)
    change = start + np.maximum(1, np.floor((d - start) * rng.uniform(*_CHANGE_AT, size=n)).astype(np.int64))
    resume = change + rng.integers(config.pause_days_min, config.pause_days_max + 1, size=n)
    return start, change, resume


def _kinds(rng: np.random.Generator, config: SyntheticConfig, n: int, periodic_fraction: float = 0.0) -> np.ndarray:
    edges = np.cumsum([config.fade_fraction, config.stop_fraction, config.reactivate_fraction, periodic_fraction])
    return np.array([FADING, STOPPED, REACTIVATED, PERIODIC, STABLE])[np.searchsorted(edges, rng.random(n), "right")]


def _multiplier(kind: np.ndarray, start, change, resume, floor, half_life, num_days: int) -> np.ndarray:
    """(pairs, days) share of the former rate after the pair's change, 0 before its start."""
    day = np.arange(num_days)[None, :]
    since = day - change[:, None]
    fade = np.where(since >= 0, floor[:, None] + (1 - floor[:, None]) * 0.5 ** ((since + 0.5) / half_life[:, None]),
                    1.0)
    stopped = (since < 0).astype(np.float64)
    paused = np.where((since >= 0) & (day < resume[:, None]), 0.0, 1.0)
    k = kind[:, None]
    out = np.select([k == FADING, k == STOPPED, k == REACTIVATED], [fade, stopped, paused], 1.0)
    return out * (day >= start[:, None])


def _weekday(config: SyntheticConfig) -> np.ndarray:
    """(days,) weekday of each day, Monday = 0."""
    first = dt.datetime.fromtimestamp(start_epoch_us(config.start) / 1e6, dt.timezone.utc).weekday()
    return (first + np.arange(config.num_days)) % 7


def _draw_pairs(rng: np.random.Generator, config: SyntheticConfig, catalog: _Catalog, num_users: int,
                *kind_args: float) -> tuple[np.ndarray, ...]:
    """Every story's first draws, per (user, interest) pair: user, category, kind, start, change, resume."""
    user, category = draw_interests(rng, num_users, catalog.category_weight, config.min_interests,
                                    config.max_interests)
    kind = _kinds(rng, config, len(user), *kind_args)
    return (user, category, kind, *_timeline(rng, config, len(user)))


def draw_seasonal(rng: np.random.Generator, config: SyntheticConfig, catalog: _Catalog, num_users: int, *,
                        with_rates: bool = False) -> StoryDraw:
    d = config.num_days
    user, category, kind, start, change, resume = _draw_pairs(rng, config, catalog, num_users, config.periodic_fraction)
    n = len(user)
    # Pareto(a) with minimum (a - 1) / a has mean 1.
    pareto = (1.0 - rng.random(num_users)) ** (-1.0 / PARETO_INDEX) * (PARETO_INDEX - 1.0) / PARETO_INDEX
    activity = np.minimum(pareto, ACTIVITY_CAP)
    share = rng.lognormal(-0.5 * 0.6**2, 0.6, size=n)
    profile = rng.choice(len(PROFILES), size=num_users, p=PROFILE_SHARES)
    floor = np.asarray(SEASONAL_FLOORS)[rng.integers(0, len(SEASONAL_FLOORS), size=n)]
    half_life = rng.uniform(3.0, 14.0, size=n)
    period = rng.integers(config.period_days_min, config.period_days_max + 1, size=n)
    phase = rng.integers(0, period)
    mult = _multiplier(kind, start, change, resume, floor, half_life, d)
    day = np.arange(d)[None, :]
    on_day = ((day - phase[:, None]) % period[:, None]) == 0
    unchanged = np.where((kind == PERIODIC)[:, None], on_day * period[:, None], 1.0) * (day >= start[:, None])
    mult = np.where((kind == PERIODIC)[:, None], unchanged, mult)
    seasonal = PROFILES[profile[user]][:, _weekday(config)]  # (pairs, days)
    scale = config.events_per_interest_per_day * (activity[user] * share)[:, None] * seasonal
    counts = rng.poisson(scale * mult)
    rates = poisson_rates(counts, scale * unchanged) if with_rates else None
    return StoryDraw(user, category, kind, start, change, resume, period, floor, half_life, counts, rates)


def draw_hawkes(rng: np.random.Generator, config: SyntheticConfig, catalog: _Catalog, num_users: int, *,
                      with_rates: bool = False) -> StoryDraw:
    d = config.num_days
    user, category, kind, start, change, resume = _draw_pairs(rng, config, catalog, num_users)
    n = len(user)
    activity = rng.lognormal(-0.5 * 0.7**2, 0.7, size=num_users)[user]
    branching = rng.uniform(0.2, 0.6, size=n)
    decay = rng.uniform(0.3, 0.8, size=n)
    session = rng.uniform(1.0, 2.5, size=n)  # mean events per session
    floor = np.asarray(HAWKES_FLOORS)[rng.integers(0, len(HAWKES_FLOORS), size=n)]
    half_life = rng.uniform(3.0, 10.0, size=n)
    mult = _multiplier(kind, start, change, resume, floor, half_life, d)
    # Immigrant sessions per day, so the stationary events per day are the target rate.
    mu = HAWKES_RATE * config.events_per_interest_per_day * activity * (1.0 - branching) / session
    excited = np.zeros(n)
    counts = np.zeros((n, d), np.int64)
    sessions_by_day = np.zeros((n, d), np.int64) if with_rates else None
    excited_by_day = np.zeros((n, d)) if with_rates else None
    for t in range(d):  # a loop over days, vectorized over pairs
        sessions = rng.poisson(mu * mult[:, t] + branching * (1.0 - decay) * excited)
        # A session holds 1 + Geometric events: the sum of s of them is s + NegBin(s, 1 / mean) extra.
        extra = rng.negative_binomial(np.maximum(sessions, 1), 1.0 / session)
        counts[:, t] = sessions + np.where(sessions > 0, extra, 0)
        if with_rates:
            sessions_by_day[:, t], excited_by_day[:, t] = sessions, branching * (1.0 - decay) * excited
        excited = decay * excited + sessions
    rates = None
    if with_rates:
        started = np.arange(d)[None, :] >= start[:, None]
        rates = TrueRates(sessions_by_day, mu[:, None] * started, excited_by_day)
    return StoryDraw(user, category, kind, start, change, resume, np.zeros(n, np.int64), floor, half_life, counts,
                     rates)


def draw_engaged(rng: np.random.Generator, config: SyntheticConfig, catalog: _Catalog, num_users: int, *,
                       with_rates: bool = False) -> StoryDraw:
    d = config.num_days
    user, category, kind, start, change, resume = _draw_pairs(rng, config, catalog, num_users)
    n = len(user)
    # Users who churn: every interest stops the same day (one that has not started by then starts earlier).
    churn = rng.random(num_users) < ENGAGED_CHURN
    churn_day = np.floor(d * rng.uniform(*_CHANGE_AT, size=num_users)).astype(np.int64)
    churned = churn[user]
    kind = np.where(churned, STOPPED, kind)
    start = np.where(churned, np.minimum(start, churn_day[user] - 1), start)
    change = np.where(churned, churn_day[user], change)
    floor = np.asarray(ENGAGED_FLOORS)[rng.integers(0, len(ENGAGED_FLOORS), size=n)]
    half_life = rng.uniform(4.0, 12.0, size=n)
    mult = _multiplier(kind, start, change, resume, floor, half_life, d)
    leave = rng.uniform(0.03, 0.12, size=num_users)
    back = rng.uniform(0.25, 0.6, size=num_users)
    quiet = rng.uniform(0.0, 0.15, size=num_users)
    engaged = np.empty((num_users, d), bool)
    state = rng.random(num_users) < back / (back + leave)  # the chain's stationary share of engaged days
    for t in range(d):
        engaged[:, t] = state
        flip = rng.random(num_users)
        state = np.where(state, flip >= leave, flip < back)
    level = np.where(engaged, 1.0, quiet[:, None])[user]  # (pairs, days)
    # The rate while engaged, so a typical interest averages about events_per_interest_per_day.
    mean_level = (back + quiet * leave) / (back + leave)
    rate = config.events_per_interest_per_day * rng.lognormal(-0.5 * 0.6**2, 0.6, size=n) / mean_level[user]
    counts = rng.poisson(rate[:, None] * level * mult)
    rates = None
    if with_rates:  # engaged days known; a churner's shared stop day is not (each pair is judged alone)
        rates = poisson_rates(counts, rate[:, None] * level * (np.arange(d)[None, :] >= start[:, None]))
    return StoryDraw(user, category, kind, start, change, resume, np.zeros(n, np.int64), floor, half_life, counts,
                     rates)


STORIES = {"seasonal": draw_seasonal, "hawkes": draw_hawkes, "engaged": draw_engaged}
