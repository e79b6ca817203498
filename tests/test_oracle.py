"""The detection ceiling (``fgjax.evaluation.oracle``) against a float64 enumeration of its hypotheses."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax.config import Config
from fgjax.data import synthetic
from fgjax.evaluation import oracle
from fgjax.evaluation.detection import fade_forgotten_days


def _reference_prior(start: int, days: int, grid: int = 400_000) -> np.ndarray:
    """P(change day) by the stories' own draw, ``start + max(1, floor((days - start) * U))``, over a fine
    grid of U (midpoints), renormalised over the days inside the log."""
    u = (np.arange(grid) + 0.5) / grid * 0.5 + 0.3
    tau = start + np.maximum(1, np.floor((days - start) * u)).astype(np.int64)
    counts = np.bincount(tau[tau < days], minlength=days).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def test_change_day_prior_is_the_stories_draw():
    days = 40
    starts = np.array([0, 3, 17, 30, 38, 39])
    prior = oracle.change_day_prior(starts, days)
    for row, start in zip(prior, starts):
        np.testing.assert_allclose(row, _reference_prior(int(start), days), atol=2e-5)
        assert row[: start + 1].sum() == 0.0  # never on or before the start day
    assert prior[-1].sum() == 0.0  # an interest starting on the last day has no change inside the log


def _log_poisson(x: float, mean: float) -> float:
    if mean <= 0:
        return 0.0 if x == 0 else -math.inf
    return x * math.log(mean) - mean - math.lgamma(x + 1)


def _reference_posterior(observed, base, excited, start, floor, half_life, share, stop_prior, fade_prior):
    """Every hypothesis written out, one pair, float64: P(forgotten by the end of day t | days 0..t)."""
    days = len(observed)
    prior = oracle.change_day_prior(np.array([start]), days)[0]
    after = float(fade_forgotten_days(np.array([floor]), np.array([half_life]), share)[0])
    out = np.zeros(days)
    for t in range(days):
        hypotheses = []  # (log weight, forgotten by t)

        def loglik(multiplier):
            return sum(_log_poisson(observed[u], base[u] * multiplier(u) + excited[u]) for u in range(t + 1))

        hypotheses.append((math.log(1 - stop_prior - fade_prior) + loglik(lambda u: 1.0), False))
        for tau in range(days):
            if prior[tau] == 0:
                continue
            fade = lambda u, tau=tau: (floor + (1 - floor) * 0.5 ** ((u - tau + 0.5) / half_life)) if u >= tau else 1.0  # noqa: E731
            hypotheses.append((math.log(stop_prior * prior[tau]) + loglik(lambda u, tau=tau: 0.0 if u >= tau else 1.0),
                               tau <= t))
            hypotheses.append((math.log(fade_prior * prior[tau]) + loglik(fade), tau + after <= t))
        top = max(w for w, _ in hypotheses)
        if top == -math.inf:
            continue
        weights = np.array([math.exp(w - top) for w, _ in hypotheses])
        forgotten = np.array([f for _, f in hypotheses])
        out[t] = weights[forgotten].sum() / weights.sum()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_posterior_matches_the_enumeration(seed):
    rng = np.random.default_rng(seed)
    pairs, days = 6, 14
    start = rng.integers(0, 6, size=pairs)
    started = np.arange(days)[None, :] >= start[:, None]
    base = rng.gamma(1.0, 1.5, size=(pairs, days)) * started
    excited = np.where(rng.random(pairs)[:, None] < 0.5, rng.gamma(1.0, 0.4, size=(pairs, days)), 0.0)
    # Each pair drawn from one of the hypotheses (unchanged, stopped or faded at some day).
    change = start + rng.integers(2, 8, size=pairs)
    kind = rng.integers(0, 3, size=pairs)
    floor, half_life = rng.choice([0.0, 0.1, 0.3], size=pairs), rng.uniform(1.0, 4.0, size=pairs)
    since = np.arange(days)[None, :] - change[:, None]
    multiplier = np.select([kind[:, None] == 1, kind[:, None] == 2],
                           [np.where(since >= 0, 0.0, 1.0),
                            np.where(since >= 0, floor[:, None] + (1 - floor[:, None]) * 0.5 ** ((since + 0.5)
                                                                                                  / half_life[:, None]),
                                     1.0)], 1.0)
    observed = rng.poisson(base * multiplier + excited)
    rates = synthetic.TrueRates(observed, base, excited)
    shares = [0.25, 0.05]
    got = oracle.forgotten_posterior(rates, start, floor, half_life, shares, stop_prior=0.3, fade_prior=0.25,
                                     chunk=4)
    for share in shares:
        assert got[share].shape == (pairs, days)
        for i in range(pairs):
            want = _reference_posterior(observed[i], base[i], excited[i], int(start[i]), floor[i], half_life[i],
                                        share, 0.3, 0.25)
            np.testing.assert_allclose(got[share][i], want, rtol=1e-9, atol=1e-12)


def test_with_nothing_to_see_the_posterior_is_the_prior():
    """An interest with no rate at all (an empty history): the data say nothing, so P(forgotten by t) is the
    prior's: stops with tau <= t plus fades past the definition by t."""
    days, start = 30, np.array([0, 5])
    zeros = np.zeros((2, days))
    floor, half_life = np.array([0.0, 0.1]), np.array([3.0, 2.0])
    got = oracle.forgotten_posterior(synthetic.TrueRates(zeros.astype(np.int64), zeros, zeros), start, floor,
                                     half_life, [0.25], stop_prior=0.3, fade_prior=0.2)[0.25]
    prior = oracle.change_day_prior(start, days)
    after = fade_forgotten_days(floor, half_life, 0.25)
    t = np.arange(days)
    for i in range(2):
        want = [0.3 * prior[i, : d + 1].sum() + 0.2 * prior[i][t + after[i] <= d].sum() for d in range(days)]
        np.testing.assert_allclose(got[i], want, rtol=1e-12)


def test_a_busy_stop_is_certain_soon_and_a_loyal_interest_stays_unsuspected():
    days = 60
    base = np.full((2, days), 8.0)
    observed = np.full((2, days), 8)
    observed[0, 30:] = 0  # stops on day 30
    rates = synthetic.TrueRates(observed, base, np.zeros((2, days)))
    post = oracle.forgotten_posterior(rates, np.zeros(2, np.int64), np.zeros(2), np.full(2, 5.0), [0.25],
                                      stop_prior=0.3, fade_prior=0.25)[0.25]
    assert post[0, 29] < 1e-3 and post[0, 31] > 0.99  # two empty days at 8 a day are a stop
    assert post[1].max() < 1e-3
    # A session no change allows (hawkes: nothing excited) rules the stops out, without NaN.
    excited = np.zeros((2, days))
    observed[0, 40] = 1
    post = oracle.forgotten_posterior(synthetic.TrueRates(observed, base, excited), np.zeros(2, np.int64),
                                      np.zeros(2), np.full(2, 5.0), [0.25], stop_prior=0.3, fade_prior=0.0)[0.25]
    assert np.isfinite(post).all() and post[0, 40] == 0.0 and post[0, 39] > 0.99


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.floats(0.0, 50.0), st.floats(0.0, 1.0), st.integers(0, 2 ** 31 - 1))
def test_posterior_is_a_probability(days, scale, excited_share, seed):
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.5, scale + 1e-9, size=(3, days)) * (rng.random((3, days)) < 0.8)
    excited = excited_share * rng.gamma(0.5, 1.0, size=(3, days))
    observed = rng.poisson(base * rng.random((3, 1)) + excited)
    post = oracle.forgotten_posterior(synthetic.TrueRates(observed, base, excited), rng.integers(0, days, size=3),
                                      rng.choice([0.0, 0.05, 0.5], size=3), rng.uniform(1, 10, size=3), [0.25, 0.05],
                                      stop_prior=0.3, fade_prior=0.25, chunk=2)
    for p in post.values():
        assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1 + 1e-12).all()
    assert (post[0.05] <= post[0.25] + 1e-12).all()  # a stricter fade definition is never met sooner


@pytest.mark.parametrize("story", ["classic", "seasonal", "hawkes", "engaged"])
def test_true_rates_leave_the_counts_alone_and_describe_them(story):
    syn = dataclasses.replace(Config().synthetic, story=story, num_users=200, num_days=70)
    catalog = synthetic.build_catalog(syn)
    plain = synthetic.draw_story(np.random.default_rng([3, 0]), syn, catalog, syn.num_users)
    told = synthetic.draw_story(np.random.default_rng([3, 0]), syn, catalog, syn.num_users, with_rates=True)
    assert plain.rates is None
    np.testing.assert_array_equal(plain.counts, told.counts)
    rates = told.rates
    assert rates.observed.shape == rates.base.shape == rates.excited.shape == told.counts.shape
    assert (rates.base >= 0).all() and (rates.excited >= 0).all()
    before_start = np.arange(syn.num_days)[None, :] < told.start_day[:, None]
    assert (rates.base[before_start] == 0).all()
    if story == "hawkes":  # sessions: each holds one event or more
        np.testing.assert_array_equal(rates.observed > 0, told.counts > 0)
        assert (rates.observed <= told.counts).all() and rates.excited.sum() > 0
    else:
        np.testing.assert_array_equal(rates.observed, told.counts)
        assert not rates.excited.any()
    # Loyal pairs are drawn at their base rate: over the pairs, counts average about it.
    loyal = ~np.isin(told.kind, (synthetic.FADING, synthetic.STOPPED, synthetic.REACTIVATED))
    mean = (rates.base + rates.excited)[loyal].sum()
    assert abs(rates.observed[loyal].sum() - mean) < 5 * math.sqrt(mean) + 0.02 * mean
