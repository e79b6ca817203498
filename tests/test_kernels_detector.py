"""The adaptive forgetting detector against a float64 recomputation from scratch.

The reference recomputes every window's features from the whole count
history (first and last activity, gaps, sums, the last T windows, the FFT),
not by the kernel's recursion, then runs the same state rules.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fgjax import kernels
from fgjax.config import DetectorConfig
from fgjax.kernels import ACTIVE, DECLINING, FORGOTTEN, NEW, NONE, REACTIVATED

P = DetectorConfig().kernel_params()  # the defaults live in the config
# The reference leaves the population's calibration out (kappa = 1): a prior worth 1e12 silences pins it.
# The population's calibration and priors off: the from-scratch reference judges each pair alone (the
# population terms are tested apart, below; the dispersion's with the reference told the population's).
PF = P._replace(calibration_prior=1e12, population_strength=0.0, dispersion_strength=0.0)


def ref_log_silence(s, events, exposure, active, silent, gaps, dispersion, longest=0, information=None, p=P,
                    stay_share=None):
    """float64 log P(s empty windows): max of the events model and (with enough gaps) the Markov model."""
    if s <= 0:
        return 0.0
    d = max(dispersion if information is None else information, 1.0)
    a, b = p.prior_events + events / d, p.prior_windows + exposure / d  # quasi-likelihood posterior
    c = math.log(dispersion) / (dispersion - 1.0) if dispersion > 1.0 + 1e-3 else 1.0
    by_events = a * (math.log(b) - math.log(b + c * s))
    # The window model's reach: what the life budget needs of memoryless silences, at least markov_reach.
    reach = max(p.markov_reach, ref_threshold(gaps, exposure, p) / math.log(gaps + 1.0 + 1e-6))
    if gaps < p.min_gaps or s > reach * max(longest, 1):
        return by_events
    m = p.prior_strength
    start_on, start_off = m + gaps, m + max(active - gaps, 0)
    # theta's prior: the population's share q (SilenceModel.stay_prior = window_model_prior(p, q)), or
    # prior_strength each way (no share given, or population_strength 0).
    n = p.population_strength
    prior_on, prior_off = (n * stay_share, n * (1 - stay_share)) if n > 0 and stay_share is not None else (m, m)
    stay_on, stay_off = prior_on + max(silent - gaps, 0), prior_off + gaps
    log_start = math.log(start_on / (start_on + start_off))
    k = s - 1  # E[theta ** k] = B(on + k, off) / B(on, off)
    log_stay = (math.lgamma(stay_on + k) - math.lgamma(stay_on)
                + math.lgamma(stay_on + stay_off) - math.lgamma(stay_on + stay_off + k))
    return max(by_events, log_start + log_stay)


def ref_surprise(s, *model, p=P, stay_share=None):
    if s < 1:
        return 0.0
    return max(ref_log_silence(1, *model, p=p, stay_share=stay_share)
               - ref_log_silence(s, *model, p=p, stay_share=stay_share), 0.0)


def ref_threshold(gaps, exposure, p=P):
    opportunities = max(p.life_windows * (gaps + 1.0) / (exposure + 2.0), 1.0)
    return math.log(opportunities) - math.log(p.false_alarm)  # kappa = 1


MAX_LIMIT = 1 << 16  # the kernel's cap

# Jitted once: called eagerly, the kernels' control flow (lax.cond, the bisection's loop) would compile anew at
# every call. The params are traced, so another false_alarm is not another compilation.
log_silence_probability = jax.jit(kernels._detector.log_silence_probability)
silence_surprise = jax.jit(kernels.silence_surprise)
silence_limit = jax.jit(kernels.silence_limit)


def ref_limit(model, gap_limit, p=P):
    """The first s >= 1 whose float64 surprise reaches the threshold (bisection: it grows with s), then the gap and 2."""
    exposure, gaps = model[1], model[4]
    if exposure < p.min_history:
        return MAX_LIMIT
    threshold = ref_threshold(gaps, exposure, p)
    lo, hi = 1, MAX_LIMIT  # the surprise at lo is below the threshold; hi is the cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ref_surprise(mid, *model, p=p) >= threshold else (mid, hi)
    return min(max(hi, gap_limit, 2), MAX_LIMIT)


def ref_poisson_cdf(k, mean):
    if mean <= 0:
        return 1.0
    k = math.floor(k)
    return sum(math.exp(-mean + i * math.log(mean) - math.lgamma(i + 1)) for i in range(k + 1))


def ref_dispersion(history):
    """(runs, steps) spread of the counts ``history`` (from the first event or the return to the last active window)."""
    n = len(history)
    total, sum_sq = history.sum(), (history**2).sum()
    sum_lag = (history[1:] * history[:-1]).sum()
    mean = total / n
    var = max(sum_sq - n * mean**2, 0.0) / max(n - 1, 1)
    usable = n >= 2 and mean > 0
    noise = math.sqrt(2.0 / max(n - 1, 1))
    d = 1.0 + max((var / mean if usable else 1.0) - 1.0 - noise, 0.0)
    cov = sum_lag / max(n - 1, 1) - mean**2
    rho = cov / var if usable and n >= 3 and var > 1e-9 else 0.0
    rho = min(max(rho - 1.0 / math.sqrt(n), 0.0), 0.9)
    steps = max(2 * sum_sq - 2 * sum_lag, 0.0) / n / (2 * mean) if usable else 1.0
    steps = 1.0 + max(steps - 1.0 - noise, 0.0)
    return d * (1 + rho) / (1 - rho), steps


def ref_shrink(index, exposure, population, m):
    """float64 ``shrink_dispersion``: the population's index worth m windows beside the interest's own, never
    below the interest's own."""
    return index if m <= 0 else max(index, 1.0 + (exposure * (index - 1.0) + m * (population - 1.0)) / (exposure + m))


def ref_population_median(indices) -> float:
    """float64 ``population_dispersion`` of one index kind: the median of the log-indices, one Poisson interest
    added as a prior, from a histogram with the Poisson ones (index 1) apart and bins of ``DISPERSION_WIDTH``
    in the log-index above, interpolated linearly within the median's bin; ``exp`` of it."""
    width, bins = kernels.DISPERSION_WIDTH, kernels.DISPERSION_BINS
    logs = np.log(np.maximum(np.asarray(indices, np.float64), 1.0))
    hist = np.zeros(bins)
    poisson = logs <= 1e-4  # reads as 1 (kernels' _POISSON)
    hist[0] = 1.0 + np.sum(poisson)
    above = logs[~poisson]
    np.add.at(hist, np.clip(1 + np.floor(above / width).astype(int), 1, bins - 1), 1.0)
    half = hist.sum() / 2
    below = np.cumsum(hist) - hist
    j = int(np.sum(below < half)) - 1
    if j == 0:
        return 1.0
    return math.exp((j - 1 + min(max((half - below[j]) / hist[j], 0.0), 1.0)) * width)


def ref_detect(counts: np.ndarray, T: int, p=PF, population=None) -> dict[str, np.ndarray]:
    """Float64 per-(window, pair) features and states for ``counts`` ``(W, pairs)``, from each history.

    ``population``: ``(W, 2)`` the population's runs and steps indices each window (with
    ``p.dispersion_strength`` > 0); the interests' own indices and histories are returned with the rest
    (``own_runs``, ``own_steps``, ``exposure``) so that the population can be checked against them."""
    W, n = counts.shape
    out = {name: np.zeros((W, n)) for name in ("silence", "limit", "rate", "recent", "expected", "period", "strength")}
    out |= {"own_runs": np.ones((W, n)), "own_steps": np.ones((W, n)), "exposure": np.zeros((W, n))}
    out["state"] = np.zeros((W, n), np.int8)
    for j in range(n):
        c = np.minimum(counts[:, j].astype(np.float64), 255)
        state, since_return, origin = NONE, 10**9, None  # origin: where the history starts (first event or return)
        kept = 0  # the longest gap of the histories before returns (a return keeps it; the pause is no gap)
        for t in range(W):
            active_now = c[t] > 0
            if state == FORGOTTEN and active_now:
                before = np.nonzero(c[origin:t] > 0)[0]
                kept = max([kept] + [b - a - 1 for a, b in zip(before, before[1:])])
                origin = t  # a return from forgotten starts the history again
            if origin is None and active_now:
                origin = t
            if origin is None:
                out["state"][t, j] = NONE
                continue
            hist = c[origin : t + 1]
            active_idx = np.nonzero(hist > 0)[0]
            last = active_idx[-1]
            alive, silence = t - origin + 1, len(hist) - 1 - last
            total = hist.sum()
            active_windows = len(active_idx)
            gaps_list = [b - a - 1 for a, b in zip(active_idx, active_idx[1:]) if b - a > 1]
            gaps, longest = len(gaps_list), max(gaps_list + [kept])
            alive_before = alive - silence
            rate = total / max(alive_before, 1)
            # The last T windows, oldest first (zeros before the first window).
            window = np.zeros(T)
            lo = max(0, t + 1 - T)
            window[T - (t + 1 - lo):] = np.clip(c[lo : t + 1], 0, 255)
            age = np.arange(T - 1, -1, -1)
            lived = age < alive
            span = min(max(math.ceil(p.drop_events / max(rate, 1e-3)), p.recent_windows), T // 2)
            recent_mask = lived & (age < span)
            recent, recent_n = window[recent_mask].sum(), recent_mask.sum()
            # Periodogram of the lived windows.
            m = lived.astype(float)
            centered = (window - (m * window).sum() / max(m.sum(), 1)) * m
            power = np.abs(np.fft.rfft(centered)) ** 2
            total_power = power[1:].sum()
            cand = power[1 : T // 2 + 1]
            has = total_power > 1e-9
            period = T / (cand.argmax() + 1) if has else 0.0
            strength = cand.max() / total_power if has else 0.0
            periodic = period >= 2 and strength >= p.min_strength and min(alive, T) >= 3 * period
            gap = max(longest, period - 1 if periodic else 0)
            gap_limit = math.ceil(p.gap_factor * gap - 1e-4)
            dispersion, steps = ref_dispersion(hist[: last + 1])
            out["own_runs"][t, j], out["own_steps"][t, j] = dispersion, steps
            out["exposure"][t, j] = max(alive_before - 1, 0)
            own_steps = steps  # the drop test's (the population's is the silence test's)
            if population is not None:
                dispersion = ref_shrink(dispersion, max(alive_before - 1, 0), population[t][0], p.dispersion_strength)
                steps = ref_shrink(steps, max(alive_before - 1, 0), population[t][1], p.dispersion_strength)
            model = (max(total - 1, 0), max(alive_before - 1, 0), max(active_windows - 1, 0),
                     max(alive_before - active_windows, 0), gaps, dispersion, longest, max(min(dispersion, steps), 1.0))
            exposure = model[1]
            threshold = ref_threshold(gaps, exposure, p)
            surprise = ref_surprise(silence, *model, p=p)
            limit = ref_limit(model, gap_limit, p)
            earlier_n = alive - recent_n
            expected = max(total - recent - 1, 0) / max(earlier_n, 1) * recent_n
            enough = earlier_n >= p.min_history and earlier_n >= recent_n
            disp = own_steps
            tail = ref_poisson_cdf(recent / disp, expected / disp)
            level = p.false_alarm / p.life_windows
            below = ref_poisson_cdf(recent / disp, p.fade_share * expected / disp)
            dropped = (enough and not periodic and not active_now and recent > 0
                       and below < p.fade_confidence and tail < level)
            silent = silence >= 2 and surprise >= threshold and silence >= gap_limit and exposure >= p.min_history
            forgotten_now = silent or dropped
            slope = np.polyfit(np.nonzero(recent_mask)[0], window[recent_mask], 1)[0] if recent_n >= 2 else 0.0
            sagging = (enough and not periodic and slope <= 1e-6 and recent < p.declining_ratio * expected
                       and tail < math.sqrt(level))
            declining_now = (silence > 0 and surprise >= 0.5 * threshold) or sagging
            since_return = 0 if (state == FORGOTTEN and active_now) else since_return + 1
            if state == NONE:
                state = NEW
            elif state == FORGOTTEN:
                state = REACTIVATED if active_now else FORGOTTEN
            elif forgotten_now:
                state = FORGOTTEN
            elif state == NEW and alive <= p.new_windows:
                state = NEW
            elif state == REACTIVATED and since_return < p.new_windows:
                state = REACTIVATED
            else:
                state = DECLINING if declining_now else ACTIVE
            out["state"][t, j] = state
            for name, value in (("silence", silence), ("limit", limit), ("rate", rate), ("recent", recent),
                                ("expected", expected), ("period", period if periodic else 0.0),
                                ("strength", strength)):
                out[name][t, j] = value
    return out


def run_kernel(counts: np.ndarray, T: int, p=P) -> dict[str, np.ndarray]:
    """``counts`` ``(W, pairs)`` through ``detector_update`` window by window (one user per pair)."""
    W, n = counts.shape
    state = kernels.detector_init(n, 1, T)
    update = jax.jit(kernels.detector_update, donate_argnums=0)
    fields = {"state": "state", "silence": "silence", "limit": "silence_limit", "rate": "rate", "recent": "recent",
              "expected": "expected_recent", "period": "period", "strength": "period_strength"}
    out = {name: np.zeros((W, n)) for name in fields}
    out["population"] = np.zeros((W, 2))
    for t in range(W):
        state, o = update(state, counts[t][:, None].astype(np.float32), None, p)
        for name, attr in fields.items():
            out[name][t] = np.asarray(getattr(o, attr))[:, 0]
        out["population"][t] = np.asarray(o.population_dispersion)
    return out


def random_histories(seed: int, W: int = 40, n: int = 60) -> np.ndarray:
    """Stable, stopping, fading, periodic, paused and late histories."""
    rng = np.random.default_rng(seed)
    t = np.arange(W)[:, None]
    rate = rng.uniform(0.3, 6.0, size=n)[None, :]
    kind = rng.integers(0, 5, size=n)[None, :]
    change = rng.integers(5, W - 5, size=n)[None, :]
    start = np.where(rng.random(n) < 0.3, rng.integers(0, W // 2, size=n), 0)[None, :]
    period = rng.integers(3, 9, size=n)[None, :]
    mult = np.select(
        [kind == 1, kind == 2, kind == 3, kind == 4],
        [t < change, 0.5 ** np.maximum(t - change, 0), (t % period == 0) * period, (t < change) | (t > change + 6)],
        1.0,
    )
    return rng.poisson(rate * mult * (t >= start)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_detector_matches_recomputation_from_scratch(seed):
    counts = random_histories(seed)
    T = 16  # shorter than the history, so the ring buffer wraps
    p = PF._replace(false_alarm=0.0023)  # off the round numbers
    got, ref = run_kernel(counts, T, p), ref_detect(counts, T, p)
    seen = ref["state"] != NONE
    np.testing.assert_array_equal(got["silence"][seen], ref["silence"][seen])
    np.testing.assert_allclose(got["rate"][seen], ref["rate"][seen], rtol=1e-5)
    np.testing.assert_allclose(got["recent"][seen], ref["recent"][seen])
    np.testing.assert_allclose(got["expected"][seen], ref["expected"][seen], rtol=1e-4, atol=1e-5)
    # Periodogram peaks can tie exactly (short series); argmax may then differ.
    assert np.mean(np.isclose(got["period"][seen], ref["period"][seen], rtol=1e-5)) > 0.98
    np.testing.assert_allclose(got["strength"][seen], ref["strength"][seen], rtol=1e-3, atol=1e-5)
    # Limits and states: float32 against float64 may differ at an exact boundary (a
    # surprise on the threshold, a strength of 0.24999997 against min_strength 0.25).
    assert np.mean(got["limit"][seen] == ref["limit"][seen]) > 0.99
    assert np.mean(got["state"] == ref["state"]) > 0.998
    assert set(np.unique(ref["state"])) >= {NEW, ACTIVE, FORGOTTEN, REACTIVATED}


def test_hand_made_history_walks_every_state():
    # 20 windows of 4 events, silence, a return, then steady again.
    history = np.array([4] * 20 + [0] * 6 + [4] * 5, np.float32)[:, None]
    never = np.zeros_like(history)
    got = run_kernel(np.concatenate([history, never], axis=1), 32)
    states = got["state"][:, 0].astype(int).tolist()
    assert states[:2] == [NEW, NEW] and states[2:20] == [ACTIVE] * 18
    limit = int(got["limit"][20, 0])
    # 79 more events over 19 windows, all active, never silent: three empty windows are unusual.
    assert limit == ref_limit((79, 19, 19, 0, 0, 1.0, 0), 0) == 3
    silent = states[20:26]
    assert silent[:2] == [ACTIVE, DECLINING]  # the second empty window is half-way
    assert silent[limit - 1 :] == [FORGOTTEN] * (6 - limit + 1)
    assert states[26:28] == [REACTIVATED, REACTIVATED] and states[28:] == [ACTIVE] * 3
    assert set(got["state"][:, 1]) == {NONE}  # never active: none, and no limit
    assert set(got["limit"][:, 1]) == {0}


def test_periodic_history_is_never_forgotten_but_a_stop_is():
    W = 60
    t = np.arange(W)
    periodic = ((t % 6) == 0) * 5.0  # five events every sixth window
    stopped = np.where(t < 30, (t % 6 == 0) * 5.0, 0.0)  # the same, then gone
    got = run_kernel(np.stack([periodic, stopped], axis=1).astype(np.float32), 32)
    assert FORGOTTEN not in set(got["state"][:, 0].astype(int))
    stop_states = got["state"][30:, 1].astype(int)
    assert FORGOTTEN in stop_states
    first = 30 + int(np.argmax(stop_states == FORGOTTEN))
    assert first - 24 > 7  # not before the usual 5-window gap has clearly run over (last burst at 24)


def test_silence_probability_falls_and_the_surprise_grows():
    for values in [(0, 0, 0, 0, 0, 1.0, 0), (40, 20, 15, 5, 4, 1.0, 2), (200, 60, 60, 0, 0, 3.0, 0),
                   (5, 30, 5, 25, 4, 2.0, 9)]:
        events, exposure, active, silent, gaps, dispersion, longest = values
        model = kernels.SilenceModel(np.float32(events), np.float32(exposure), np.float32(active),
                                     np.float32(silent), np.float32(gaps), np.float32(longest),
                                     np.float32(dispersion), gap_limit=np.float32(0), periodic=np.bool_(False),
                                     kappa=np.float32(1))
        logs = [float(log_silence_probability(np.float32(s), model, P)) for s in range(8)]
        assert logs[0] == 0.0
        refs = [ref_log_silence(s, *values) for s in range(8)]
        np.testing.assert_allclose(logs, refs, rtol=1e-4, atol=1e-4)
        surprise = [float(silence_surprise(np.float32(s), model, P)) for s in range(8)]
        assert surprise[:2] == [0.0, 0.0] and all(a <= b + 1e-5 for a, b in zip(surprise, surprise[1:]))
        # s* is the first silence whose surprise reaches the threshold (and at least 2 windows).
        limit = int(silence_limit(model, P))
        if exposure < P.min_history:
            assert limit == MAX_LIMIT
        else:
            assert limit == ref_limit(values, 0)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 300), st.integers(0, 80), st.integers(0, 80), st.integers(0, 80), st.integers(0, 10),
       st.floats(1.0, 6.0), st.integers(0, 12), st.floats(1e-4, 0.2))
@example(events=4, exposure=0, active=0, silent=0, gaps=9, dispersion=1.0, longest=0, false_alarm=1e-4)  # reach 7 - 3e-7
@example(events=26, exposure=0, active=0, silent=0, gaps=0, dispersion=1.0, longest=0, false_alarm=0.125)  # see below
def test_the_surprise_grows_with_the_silence_and_the_limit_is_its_first_crossing(
    events, exposure, active, silent, gaps, dispersion, longest, false_alarm
):
    p = P._replace(false_alarm=false_alarm)
    values = (events, exposure, active, silent, gaps, dispersion, longest)
    model = kernels.SilenceModel(*(np.float32(v) for v in values[:5]), np.float32(longest), np.float32(dispersion),
                                 gap_limit=np.float32(0), periodic=np.bool_(False), kappa=np.float32(1))
    surprise = np.asarray(silence_surprise(np.arange(40, dtype=np.float32), model, p))
    assert surprise[0] == 0 and surprise[1] == 0
    # Where the window model's reach ends exactly on a whole silence, float32 and float64 may put that
    # silence on either side of it (a jump between the two models): that silence is left out.
    edge = max(p.markov_reach, ref_threshold(gaps, exposure, p) / math.log(gaps + 1.0 + 1e-6)) * max(longest, 1)
    keep = [s for s in range(40) if abs(s - edge) > 1e-4 * edge] if abs(1 - edge) > 1e-4 * edge else [0]
    np.testing.assert_allclose(surprise[keep], [ref_surprise(s, *values, p=p) for s in keep], rtol=1e-3, atol=1e-3)
    limit = int(silence_limit(model, p))
    want = ref_limit(values, 0, p)
    # float32 against float64 at an exact boundary may move the first crossing by one window.
    assert abs(limit - want) <= 1 or (limit == want == MAX_LIMIT)


def test_the_surprise_of_one_silent_window_is_exactly_zero_under_xlas_default_flags():
    """The suite compiles with fast-compile flags (tests/conftest.py); users do not. Under XLA's default CPU
    flags the jitted, vectorized log P(1) differed from the scalar one by 4.8e-7 at this example (hypothesis
    found it), so the surprise of a one-window silence was not 0, as its definition says."""
    code = (
        "import json; import jax; import numpy as np; from fgjax import kernels; from fgjax.config import DetectorConfig\n"
        "p = DetectorConfig().kernel_params()._replace(false_alarm=0.125)\n"
        "m = kernels.SilenceModel(*(np.float32(v) for v in (26, 0, 0, 0, 0, 0, 1)), gap_limit=np.float32(0),"
        " periodic=np.bool_(False), kappa=np.float32(1))\n"
        "surprise = jax.jit(kernels.silence_surprise)(np.arange(40, dtype=np.float32), m, p)\n"
        "print(json.dumps(np.asarray(surprise)[:4].tolist()))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FGJAX_TESTS_XLA_FLAGS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    surprise = json.loads(proc.stdout.strip().splitlines()[-1])
    assert surprise[:2] == [0.0, 0.0]
    # 26 events over 1 pseudo window: log P(s) = 27 log(1 / (1 + s)), so the surprise is 27 log((1 + s) / 2).
    np.testing.assert_allclose(surprise[2:], [27 * math.log(3 / 2), 27 * math.log(4 / 2)], rtol=1e-5)


def test_poisson_cdf_matches_reference_and_edge_cases():
    for k, mean in [(0, 0.5), (3, 2.0), (10, 25.0), (0, 30.0), (5, 0.0)]:
        np.testing.assert_allclose(float(kernels.poisson_cdf(k, mean)), ref_poisson_cdf(k, mean), rtol=1e-4, atol=1e-9)


def test_degree_alarm_uses_each_users_own_history():
    num_users = 2
    state = kernels.detector_init(num_users, 1, 8)
    counts = np.ones((num_users, 1), np.float32)
    degrees = [np.array([0.1, 0.5]), np.array([0.12, 0.6]), np.array([0.11, 0.55]), np.array([0.5, 0.58])]
    alarms = []
    step = jax.jit(lambda s, c, d: kernels.detector_update(s, c, d, P))
    for d in degrees:
        state, out = step(state, counts, d.astype(np.float32))
        alarms.append(np.asarray(out.degree_alarm).tolist())
    # The last F of 0.5 is an alarm for user 0 (history ~0.11) but not for user 1 (history ~0.55).
    assert alarms[-1] == [True, False]
    assert alarms[0] == [False, False]  # the fallback threshold (1.0) before any history


def test_event_counts_drop_padding_and_uncategorized():
    counts = kernels.event_counts(np.array([0, 0, 1, 2, 1]), np.array([1, 1, 0, 0, 3]), 2, 3)
    np.testing.assert_array_equal(np.asarray(counts), [[0, 2, 0], [1, 0, 0]])


def test_a_ring_of_one_window_is_refused():
    """T = 1 has no periodogram and no slot beside this window's: a clear error, not a wrong previous count."""
    with pytest.raises(ValueError, match="buffer_windows must be at least 2"):
        kernels.detector_init(3, 2, 1)


def test_user_blocks_give_the_same_results():
    counts = random_histories(3, W=24, n=23)  # 23 users: blocks of 5 leave a ragged last block
    params = P
    whole = kernels.detector_init(23, 1, 8)
    blocked = kernels.detector_init(23, 1, 8)
    step = jax.jit(kernels.detector_update)
    step_blocked = jax.jit(lambda s, c: kernels.detector_update(s, c, None, params, user_block=5))
    for t in range(counts.shape[0]):
        whole, a = step(whole, counts[t][:, None], None, params)
        blocked, b = step_blocked(blocked, counts[t][:, None])
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            _assert_same(x, y)
    for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(blocked)):
        _assert_same(x, y)


def _assert_same(x, y):
    """Decisions (integers, booleans) equal exactly; floats to float32 rounding, since the compiler may
    vectorize a block of 5 users and one of 23 differently."""
    x, y = np.asarray(x), np.asarray(y)
    if np.issubdtype(x.dtype, np.floating):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(x, y)


def test_long_history_pause_then_fade_is_forgotten_twice():
    """Past 2T windows a trend must not pass as a period-T cycle, and a pause must not become the expected gap."""
    rng = np.random.default_rng(11)
    T = 8
    rate = np.concatenate([np.full(30, 6.0), np.zeros(6), np.full(20, 6.0), 6.0 * 0.5 ** np.arange(1, 15)])
    counts = rng.poisson(rate).astype(np.float32)[:, None]  # 70 windows, far past 2T
    got = run_kernel(counts, T)
    states = got["state"][:, 0].astype(int)
    assert FORGOTTEN in states[30:36]  # the pause
    assert REACTIVATED in states[36:39]
    fade = states[56:]
    assert FORGOTTEN in fade
    assert int(np.argmax(fade == FORGOTTEN)) <= 7  # within 7 windows of the fade's start (rate 6 -> 0.05)
    # The limit after the return is not stretched by the 6-window pause.
    assert got["limit"][54, 0] <= 3


def test_period_is_zero_where_there_is_none():
    """The evidence's period is 0 unless it counts: strong, and three cycles seen; never the buffer length."""
    rng = np.random.default_rng(5)
    W, T = 90, 64
    t = np.arange(W)
    paused = np.where((t < 40) | (t >= 60), rng.poisson(3.0, W), 0)  # a pause: one slow "cycle" in the buffer
    steady = rng.poisson(2.0, W)
    periodic = ((t % 6) == 0) * 5
    got = run_kernel(np.stack([paused, steady, periodic], axis=1).astype(np.float32), T)
    period, strength = got["period"], got["strength"]
    assert not np.any(period == T)
    assert np.all(period[strength < P.min_strength] == 0)
    assert np.all(period[:, :2] == 0)  # no period in a pause or in Poisson noise
    assert np.all(period[45:, 2] > 0)  # a real one is reported


# The failure modes, each pinned by a hand-made history.


def test_loyal_steady_interests_are_never_flagged_over_200_windows():
    """300 steady interests (0.3 to 8 events a window, Poisson) over 200 windows at the default budget:
    false_alarm is the chance a loyal interest is *ever* flagged in its life, here 1 %."""
    rng = np.random.default_rng(7)
    rates = np.geomspace(0.3, 8.0, 300)
    counts = rng.poisson(rates[None, :], size=(200, 300)).astype(np.float32)
    flagged = (run_series(counts, 64) == FORGOTTEN).any(axis=0)
    assert P.false_alarm == 0.01 and P.life_windows == 200
    assert flagged.mean() <= 0.01


def test_a_return_stays_reactivated():
    """After a pause is flagged and the interest comes back at its old rate, single quiet windows
    (the return's history is short, and the pause is not in it) never send it back to forgotten."""
    history = np.array([3] * 30 + [0] * 8 + [3, 0, 3, 0, 0, 3, 0, 3, 3, 0, 3, 0] * 4, np.float32)[:, None]
    states = run_series(history, 32)[:, 0]
    assert FORGOTTEN in states[30:38]
    back = 38
    assert states[back] == REACTIVATED
    assert FORGOTTEN not in states[back:]



def test_a_return_keeps_the_lulls_it_had_before_the_pause():
    """Hysteresis: a return restarts the history (rate, sums, counters), but the longest lull the
    interest came back from before its pause still counts (the pause itself is no lull), so a usual
    lull soon after the return is not a new unusual silence. Before the pause: gaps of 1-6 windows;
    after it: 8 busy windows, then a 6-window lull, which its own short history alone calls unusual."""
    rng = np.random.default_rng(11)
    before = np.concatenate([np.r_[rng.integers(2, 6), np.zeros(g)] for g in rng.integers(1, 7, size=40)])[:120]
    after = np.r_[4, 3, 5, 4, 2, 3, 4, 3, np.zeros(6), 3, 4, 2, np.zeros(5), 4, 3, np.zeros(6), 5, 2, 3]
    history = np.concatenate([before, np.zeros(40), after]).astype(np.float32)[:, None]
    states = run_series(history, 64)[:, 0]
    back = len(before) + 40
    assert FORGOTTEN in states[len(before) : back]  # the pause is caught
    assert states[back] == REACTIVATED
    assert FORGOTTEN not in states[back:]

def test_a_fade_is_judged_by_the_stated_definition():
    """fade_share is what forgotten means for a fade: a fade to 40 % of the former rate is not
    forgotten at 25 %, a fade to nothing is, after its rate crosses 25 %; at 50 % a fade to 20 % is."""
    W, change, half_life = 90, 30, 4.0
    t = np.arange(W)
    since = np.maximum(t - change, 0)
    rng = np.random.default_rng(3)
    to_floor = rng.poisson(np.where(t < change, 10.0, 10.0 * (0.4 + 0.6 * 0.5 ** (since / half_life))), size=(40, W))
    to_zero = rng.poisson(np.where(t < change, 10.0, 10.0 * 0.5 ** (since / half_life)), size=(40, W))
    states = run_series(np.concatenate([to_floor, to_zero]).T.astype(np.float32), 64)
    assert not (states[:, :40] == FORGOTTEN).any()
    crossing = change + 2 * half_life  # 0.5 ** 2 = 25 %
    first = np.argmax(states[:, 40:] == FORGOTTEN, axis=0)
    assert (states[:, 40:] == FORGOTTEN).any(axis=0).all()
    assert np.all(first >= crossing - 1)
    # At 50 % a fade to 10 % is forgotten too, once it crosses 50 %.
    to_tenth = rng.poisson(np.where(t < change, 10.0, 10.0 * (0.1 + 0.9 * 0.5 ** (since / half_life))), size=(40, W))
    half = run_series(to_tenth.T.astype(np.float32), 64, P._replace(fade_share=0.5))
    crossing_half = change + half_life * math.log2(0.9 / 0.4)  # 0.1 + 0.9 * 0.5 ** x = 0.5
    first = np.argmax(half == FORGOTTEN, axis=0)
    assert (half == FORGOTTEN).any(axis=0).all() and np.all(first >= crossing_half - 1)


def test_a_short_pause_of_a_busy_interest_is_caught():
    """Twelve weeks at 8 events a week, then two empty weeks: forgotten at the second, reactivated after."""
    rng = np.random.default_rng(2)
    busy = rng.poisson(8.0, size=(12, 30))
    history = np.concatenate([busy, np.zeros((2, 30)), rng.poisson(8.0, size=(4, 30))]).astype(np.float32)
    states = run_series(history, 64, P._replace(life_windows=200 / 7))  # weekly windows: 200 days
    assert np.mean(states[13] == FORGOTTEN) >= 0.9 and not (states[:13] == FORGOTTEN).any()
    assert np.all(states[14][states[13] == FORGOTTEN] == REACTIVATED)


def test_calibration_learns_how_surprising_loyal_silences_are():
    """kappa: 1 for Poisson interests (never below), above 1 where loyal interests take breaks their rate
    cannot explain (a busy interest silent for 3-8 windows now and then)."""
    rng = np.random.default_rng(4)
    W, n = 120, 400
    poisson = rng.poisson(1.0, size=(W, n))
    breaks = np.ones((W, n), bool)
    for j in range(n):
        for start in rng.choice(W, size=4, replace=False):
            breaks[start : start + rng.integers(3, 9), j] = False
    with_breaks = rng.poisson(6.0 * breaks)
    kappas = []
    for counts in (poisson, with_breaks):
        state = kernels.detector_init(n, 1, 32)
        update = jax.jit(kernels.detector_update, static_argnames=("with_limits",))
        for w in range(W):
            state, out = update(state, counts[w][:, None].astype(np.float32), None, P, with_limits=False)
        kappas.append(np.asarray(out.kappa))
    assert np.all(kappas[0] >= 1.0) and np.all(kappas[0] < 1.2)
    assert kappas[1].max() > 1.5
    hist = np.zeros((len(kernels.CAL_AGES) + 1, kernels.CAL_BINS), np.float32)
    hist = kernels.calibration_add(hist, np.array([0.1, 5.0, 5.0]), np.array([1.0, 50.0, 50.0]), np.array([1, 1, 0]))
    assert float(hist.sum()) == 2 and float(hist[0, 0]) == 1 and float(hist[-1, int(5 / kernels.CAL_WIDTH)]) == 1


def run_series(counts: np.ndarray, T: int, p=P) -> np.ndarray:
    """``(W, pairs)`` int8 states of ``counts`` ``(W, pairs)`` in one scan (one user per pair)."""
    def step(state, c):
        state, out = kernels.detector_update(state, c[:, None], None, p, with_limits=False)
        return state, out.state[:, 0]

    _, states = jax.jit(lambda c: jax.lax.scan(step, kernels.detector_init(c.shape[1], 1, T), c))(counts)
    return np.asarray(states)


def _ref_periodogram(series: np.ndarray, lived: int) -> tuple[int, float, bool]:
    """float64 ``(j, strength, tied)`` of a T-window series (oldest first) whose last ``lived`` windows count:
    centred over those, the rest 0, |rfft|^2 over j = 1 .. T // 2; j = 0 without power."""
    T = len(series)
    m = np.arange(T) >= T - lived
    y = np.where(m, series - series[m].mean(), 0.0) if lived else np.zeros(T)
    power = np.abs(np.fft.rfft(y)[1: T // 2 + 1]) ** 2
    if power.sum() <= 1e-12 * max(1.0, (y ** 2).sum() * T):
        return 0, 0.0, False
    order = np.sort(power)
    return int(np.argmax(power)) + 1, float(power.max() / power.sum()), bool(order[-2] >= (1 - 1e-3) * order[-1])


@pytest.mark.parametrize(("every", "periodogram"), [(3, "dft"), (4, "fft")])
def test_period_every_takes_a_users_periodogram_on_its_turn_and_keeps_it_between(every, periodogram):
    """With ``period_every=P`` user u's periodogram is that of the ring at its last turn w' <= w (w' % P ==
    u % P), float64 rfft of the lived windows, or 0 when the interest came back from forgotten since;
    and it does not depend on the user blocks (13 users in ragged blocks of 5, cache blocks of 2)."""
    W, n, K, T = 70, 13, 3, 16
    counts = np.stack([random_histories(s, W=W, n=n) for s in range(K)], axis=-1)  # (W, n, K)
    p = P._replace(false_alarm=0.05)  # more alarms, so more returns from forgotten
    runs = []
    for block, cache in ((None, None), (5, 2)):
        step = jax.jit(lambda s, c, block=block, cache=cache: kernels.detector_update(
            s, c, None, p, user_block=block, cache_block=cache, period_every=every, with_limits=False,
            periodogram=periodogram))
        state = kernels.detector_init(n, K, T)
        rows = []
        for w in range(W):
            before = np.asarray(state.state)
            state, out = step(state, counts[w])
            rows.append((before, np.asarray(state.alive), np.asarray(state.period_index),
                         np.asarray(out.period_strength), np.asarray(out.period)))
        runs.append(rows)
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            _assert_same(x, y)
    rows = runs[0]
    saturated = np.minimum(counts, 255.0)
    padded = np.concatenate([np.zeros((T - 1, n, K)), saturated])  # window w's ring: padded[w : w + T]
    checked = returns = 0
    for w in range(W):
        for u in range(n):
            turn = w - (w - u) % every  # the last window <= w with turn % P == u % P
            for k in range(K):
                came_back = [r for r in range(max(turn, 0), w + 1)
                             if rows[r][0][u, k] == FORGOTTEN and counts[r, u, k] > 0]
                index, strength = rows[w][2][u, k], rows[w][3][u, k]
                if came_back or turn < 0:
                    returns += bool(came_back)
                    if not (turn >= 0 and came_back == [turn]):  # a return on its turn is taken after the reset
                        assert (index, strength) == (0, 0.0), (w, u, k, turn, came_back)
                        continue
                j, s, tied = _ref_periodogram(padded[turn: turn + T, u, k], min(rows[turn][1][u, k], T))
                assert strength == pytest.approx(s, abs=1e-5), (w, u, k)
                if not tied:  # j, kept where it can count (0 below min_strength; either within rounding of it)
                    assert index in ((j,) if s > p.min_strength + 1e-5 else (0,) if s < p.min_strength - 1e-5
                                     else (0, j)), (w, u, k)
                    period = rows[w][4][u, k]
                    assert period in (0.0, np.float32(T / j) if j else 0.0)
                checked += 1
    assert checked > 1000 and returns > 0


@pytest.mark.parametrize("share_needed, level, capacity", [(0.1, 0.001, 97), (0.6, 0.001, 97), (1.0, 0.001, None),
                                                       (0.6, 0.3, 211)])
def test_drop_verdicts_in_chunks_equal_the_drop_test_over_every_pair(share_needed, level, capacity):
    """The drop test decided after the block loop, its Poisson tails taken only where ``_drop_flags`` says a
    flagged pair can pass (in several chunks at 97 and 211 pairs, ragged; every flagged pair at level 0.3,
    where the shortcut does not hold), gives the states the test over every pair gives: forgotten where a
    pair may drop, declining where an active pair may sag, the silence test's state elsewhere."""
    from fgjax.kernels import _detector as kd

    rng = np.random.default_rng(int(share_needed * 10) + int(level * 10))
    n = 1003
    dispersion = rng.choice(np.array([1.0, 1.0, 1.7, 3.25], np.float32), n)
    mean = rng.uniform(0.5, 40.0, n).astype(np.float32)
    below = rng.random(n) < share_needed
    k = np.where(below, np.floor(mean * rng.uniform(0.0, 0.9, n)), mean + rng.uniform(0.0, 3.0, n)).astype(np.float32)
    recent, expected = k * dispersion, mean * dispersion
    k, mean = recent / dispersion, expected / dispersion  # as the kernel divides them (float32)
    may_drop, may_sag = rng.random(n) < 0.5, rng.random(n) < 0.5
    code = rng.integers(0, len(kernels.STATE_NAMES), n).astype(np.int8)
    params = DetectorConfig().kernel_params()._replace(fade_share=0.25, fade_confidence=0.05)
    shaped = lambda a: a.reshape(17, 59)  # noqa: E731

    def verdicts(code, recent, expected, dispersion, may_drop, may_sag):
        flags = kd._drop_flags(may_drop, may_sag, recent / dispersion, expected / dispersion, np.float32(level))
        return kd._drop_verdicts(code, recent, expected, dispersion, flags, params, np.float32(level),
                                 capacity=capacity)

    got = jax.jit(verdicts)(*map(shaped, (code, recent, expected, dispersion, may_drop, may_sag)))
    tail = np.array([ref_poisson_cdf(a, b) for a, b in zip(k, mean)])
    below_share = np.array([ref_poisson_cdf(a, 0.25 * b) for a, b in zip(k, mean)])
    dropped = may_drop & (below_share < 0.05) & (tail < level)
    sagging = may_sag & (tail < np.sqrt(level))
    want = np.where(dropped, FORGOTTEN, np.where(sagging, DECLINING, code))
    # Compared where the tails are clear of float32 rounding at the thresholds (the reference's are float64).
    clear = np.ones(n, bool)
    for value, edge in ((tail, level), (below_share, 0.05), (tail, np.sqrt(level))):
        clear &= np.abs(value - edge) > 1e-4 * edge
    assert clear.mean() > 0.97
    np.testing.assert_array_equal(np.asarray(got).ravel()[clear], want[clear])
    assert dropped[clear].sum() > 0 and sagging[clear].sum() > 0 and (want != code).sum() < n


def test_age_class_is_searchsorted_over_the_calibration_ages():
    """The class count equals NumPy's ``searchsorted(side="right")``, on the ages themselves, next to them,
    fresh random exposures, infinities and NaN (past the last class, as NumPy sorts it)."""
    from fgjax.kernels import _detector as kd

    ages = np.asarray(kd.CAL_AGES, np.float32)
    rng = np.random.default_rng()
    x = np.concatenate([ages, np.nextafter(ages, -np.inf), np.nextafter(ages, np.inf), rng.uniform(-5, 100, 1000),
                        [0.0, np.inf, -np.inf, np.nan]]).astype(np.float32)
    got = np.asarray(jax.jit(kd.age_class)(x))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.searchsorted(ages, x, side="right"))


@pytest.mark.parametrize("share", [0.1, 0.5, 0.85])
def test_the_window_models_prior_is_the_populations_share(share):
    """With population_strength n, theta ~ Beta(n q + stays, n (1 - q) + gaps): against float64, and a
    population whose silences run on makes the same silence less surprising."""
    values = (60, 50, 30, 20, 8, 1.5, 4)  # eight gaps: the window model speaks
    model = kernels.SilenceModel(*(np.float32(v) for v in values[:5]), np.float32(values[6]), np.float32(values[5]),
                                 gap_limit=np.float32(0), periodic=np.bool_(False), kappa=np.float32(1),
                                 stay_prior=kernels.window_model_prior(P, np.float32(share)))
    logs = [float(log_silence_probability(np.float32(s), model, P)) for s in range(1, 14)]
    refs = [ref_log_silence(s, *values, stay_share=share) for s in range(1, 14)]
    np.testing.assert_allclose(logs, refs, rtol=1e-4, atol=1e-4)
    flat = [ref_log_silence(s, *values, p=P._replace(population_strength=0.0)) for s in range(1, 14)]
    assert refs != flat  # the prior matters here
    surprise = lambda q: [ref_surprise(s, *values, stay_share=q) for s in range(2, 14)]  # noqa: E731
    assert all(a <= b + 1e-12 for a, b in zip(surprise(0.95), surprise(share)))


def test_population_totals_count_completed_silences_but_not_returns():
    """silence_totals adds (silence - 1, silence) per silence that ended with activity; a return from forgotten
    (a pause) is left out; each window's stay_share is (stays + 1) / (silent + 2) of the totals before it."""
    W = 40
    busy = np.full(W, 3.0)
    busy[[10, 11, 12]] = 0.0  # a 3-window silence, ended at window 13: (2, 3)
    busy[[20]] = 0.0  # a 1-window silence, ended at window 21: (0, 1)
    paused = np.where(np.arange(W) < 8, 5.0, 0.0)
    paused[30:] = 5.0  # forgotten long before window 30: its return is no silence of the population's
    state = kernels.detector_init(2, 1, 16)
    update = jax.jit(kernels.detector_update)
    seen = []
    for t in range(W):
        before = np.asarray(state.silence_totals).tolist()
        state, out = update(state, np.stack([busy[t], paused[t]])[:, None].astype(np.float32), None, P)
        seen.append(np.asarray(state.silence_totals).tolist())
        want = min(max((before[0] + 1) / (before[1] + 2), 0.05), 0.95)
        assert float(out.stay_share) == pytest.approx(want, rel=1e-6)
    assert seen[12] == [0.0, 0.0] and seen[13] == [2.0, 3.0] and seen[21] == [2.0, 4.0]
    assert seen[-1] == [2.0, 4.0]


def bursty_histories(seed: int, W: int = 40, n: int = 60, share: float = 1 / 3) -> np.ndarray:
    """``random_histories`` with a ``share`` of the pairs in sessions (a geometric burst of events on a few
    days), so that the population's dispersion is well above 1 where most are."""
    rng = np.random.default_rng(seed)
    counts = random_histories(seed, W, n)
    bursty = rng.random(n) < share
    sessions = (rng.random((W, n)) < 0.25) * rng.geometric(0.15, size=(W, n))
    return np.where(bursty[None, :], sessions, counts).astype(np.float32)


def test_population_dispersion_against_float64():
    """With dispersion_strength m, each window's population indices are the medians (one Poisson interest as a
    prior) of the interests' own indices after the window before, over those with 4+ windows of history; each
    interest's indices are raised toward them, ``max(I, 1 + (n (I - 1) + m (P - 1)) / (n + m))``: against a
    float64 recomputation told the kernel's population, which is itself checked against the reference's own
    indices."""
    counts = bursty_histories(0, share=0.8)
    T, m = 16, 10.0
    p = PF._replace(false_alarm=0.0023, dispersion_strength=m)
    got = run_kernel(counts, T, p)
    ref = ref_detect(counts, T, p, population=got["population"])
    np.testing.assert_array_equal(got["population"][0], [1.0, 1.0])  # before any window: Poisson
    for t in range(1, counts.shape[0]):
        use = ref["exposure"][t - 1] >= 4
        want = [ref_population_median(ref[f"own_{k}"][t - 1][use]) for k in ("runs", "steps")]
        np.testing.assert_allclose(got["population"][t], want, rtol=1e-5, err_msg=f"window {t}")
    assert got["population"][-1].min() > 1.3  # most interests come in sessions: the median is above 1
    seen = ref["state"] != NONE
    np.testing.assert_allclose(got["rate"][seen], ref["rate"][seen], rtol=1e-5)
    assert np.mean(got["limit"][seen] == ref["limit"][seen]) > 0.99
    assert np.mean(got["state"] == ref["state"]) > 0.998
    # The prior changes answers here: without it (m = 0) the reference flags other windows.
    alone = ref_detect(counts, T, p._replace(dispersion_strength=0.0))
    assert np.mean(alone["limit"][seen] != ref["limit"][seen]) > 0.05


# m off, or pseudo windows that float32 holds as normal numbers with their pull (a subnormal pull flushes to 0).
@given(st.floats(1.0, 50.0), st.floats(1.0, 50.0), st.floats(0.0, 500.0), st.one_of(st.just(0.0), st.floats(1e-3, 100.0)))
@settings(max_examples=100, deadline=None)
def test_shrunk_dispersion_lies_between_the_interests_and_the_populations(index, population, exposure, m):
    """``shrink_dispersion``: against float64; between the two indices and never below the interest's own;
    the interest's own with m = 0, the larger of the two with no history."""
    strength, pull, _ = kernels.dispersion_prior(P._replace(dispersion_strength=m),
                                                 np.float32([population, population]))
    got = float(kernels.shrink_dispersion(np.float32(index), np.float32(exposure), strength, pull))
    want = ref_shrink(float(np.float32(index)), float(np.float32(exposure)), float(np.float32(population)),
                      float(np.float32(m)))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert np.float32(index) <= got <= max(index, population) * (1 + 1e-5)
    if m == 0:
        assert got == np.float32(index)  # exactly: the interest's own
    elif population <= index:
        assert got == pytest.approx(np.float32(index), rel=1e-6)  # never pulled down (float32 rounding at most)
    elif exposure == 0:
        assert got == pytest.approx(np.float32(population), rel=1e-5)


def test_population_dispersion_histogram_leaves_out_young_and_unseen_interests():
    """``dispersion_histogram`` counts interests with 4+ windows of history only, the Poisson ones (index 1) in
    bin 0; ``population_dispersion`` is 1 for an empty population or one mostly Poisson, else the median."""
    runs = np.float32([[2.0, 8.0, 5.0], [4.0, 1.0, 3.0]])
    steps = np.float32([[1.0, 2.0, 9.0], [1.0, 1.0, 1.0]])
    exposure = np.float32([[4, 3.99, 0], [100, 3, 2]])
    hist = np.asarray(kernels.dispersion_histogram(runs, steps, exposure))
    assert hist.shape == (2, kernels.DISPERSION_BINS) and hist.sum(-1).tolist() == [2.0, 2.0]
    bin_of = lambda x: 1 + int(math.log(x) / kernels.DISPERSION_WIDTH)  # noqa: E731
    assert hist[0, bin_of(2.0)] == 1 and hist[0, bin_of(4.0)] == 1 and hist[0, 0] == 0
    assert hist[1, 0] == 2
    # Runs: 1 (the prior), 2, 4: the median is half-way into 2's bin; steps: all Poisson.
    want = math.exp((bin_of(2.0) - 1 + 0.5) * kernels.DISPERSION_WIDTH)
    np.testing.assert_allclose(kernels.population_dispersion(hist), [want, 1.0], rtol=1e-6)
    assert kernels.population_dispersion(hist)[0] == pytest.approx(2.0, rel=kernels.DISPERSION_WIDTH)
    empty = np.zeros((2, kernels.DISPERSION_BINS), np.float32)
    np.testing.assert_array_equal(kernels.population_dispersion(empty), [1.0, 1.0])
    assert kernels.dispersion_bins(np.float32(1e6)) == kernels.DISPERSION_BINS - 1  # the last bin holds the rest


@given(st.lists(st.floats(1.0, 45.0), min_size=1, max_size=40))  # below the last bin (about 48)
@settings(max_examples=60, deadline=None)
def test_population_dispersion_is_the_float64_median(indices):
    """``population_dispersion`` of any population against the float64 reference median, and within one bin of
    the middle values of the log-indices (the Poisson prior included)."""
    values = np.float32(indices)
    hist = np.asarray(kernels.dispersion_histogram(values, values, np.full(values.shape, 10.0, np.float32)))
    got = float(kernels.population_dispersion(hist)[0])
    assert got == pytest.approx(ref_population_median(values.astype(np.float64)), rel=1e-5)
    logs = np.sort(np.log(np.concatenate([[1.0], values.astype(np.float64)])))
    lower, upper = logs[(logs.size - 1) // 2], logs[logs.size // 2]  # the middle values (one when odd)
    assert lower - kernels.DISPERSION_WIDTH - 1e-6 <= math.log(got) <= upper + kernels.DISPERSION_WIDTH + 1e-6


def _random_models(rng, n):
    """``n`` silence models over the ranges an analysis meets, both models' priors and calibrations included."""
    exposure = rng.integers(0, 200, n).astype(np.float32)
    active = np.floor(exposure * rng.random(n)).astype(np.float32)
    gaps = np.floor(np.minimum(active, exposure - active) * rng.random(n)).astype(np.float32)
    runs = (1.0 + rng.exponential(1.0, n)).astype(np.float32)
    return kernels.SilenceModel(
        events=(active * rng.gamma(1.0, 3.0, n)).astype(np.float32), exposure=exposure, active_windows=active,
        silent_windows=exposure - active, gaps=gaps, longest_gap=np.ceil(rng.exponential(4.0, n) * (gaps > 0)),
        dispersion=runs, gap_limit=np.zeros(n, np.float32), periodic=np.zeros(n, bool),
        kappa=(1.0 + rng.exponential(0.5, n)).astype(np.float32),
        information=np.maximum(runs * rng.uniform(0.5, 1.5, n), 1.0).astype(np.float32),
        stay_prior=(np.float32(20.0 * 0.7), np.float32(20.0 * 0.3)) if rng.random() < 0.5 else None)


def _full_range_limit(model, p, max_limit=MAX_LIMIT):
    """s* by the bisection over the whole range [1, max_limit] in 17 steps, as before its bracket."""
    from fgjax.kernels import _detector as detector

    threshold = kernels.silence_threshold(model, p)
    terms = detector._silence_terms(model, p)
    one = detector._log_probability(np.ones(model.events.shape, np.float32), terms)
    lo, hi = np.ones(model.events.shape, np.float32), np.full(model.events.shape, float(max_limit), np.float32)

    def bisect(_, bounds):
        mid = jax.numpy.floor((bounds[0] + bounds[1]) / 2.0)
        found = detector._surprise(mid, terms, one) >= threshold
        return jax.numpy.where(found, bounds[0], mid), jax.numpy.where(found, mid, bounds[1])

    _, by_chance = jax.lax.fori_loop(0, max_limit.bit_length(), bisect, (lo, hi))
    return jax.numpy.where(model.exposure >= p.min_history, jax.numpy.maximum(by_chance, 2.0), float(max_limit))


@pytest.mark.parametrize("false_alarm", [1e-4, 0.01, 0.3])
def test_the_bracketed_limit_is_the_full_range_bisections_and_its_bracket_holds(false_alarm):
    from fgjax.kernels import _detector as detector

    p = P._replace(false_alarm=false_alarm)
    model = _random_models(np.random.default_rng(int(false_alarm * 1e4)), 20000)
    want = np.asarray(jax.jit(_full_range_limit, static_argnums=1)(model, p)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(silence_limit(model, p)), want)
    # The events model's bracket holds by itself (the whole range is only the fallback): its low end is not
    # unlikely, its high end is (or is the cap), and it leaves a few bisection steps, not 17.
    threshold = kernels.silence_threshold(model, p)
    terms = detector._silence_terms(model, p)
    one = detector._log_probability(np.ones(20000, np.float32), terms)
    lo, hi = (np.asarray(a) for a in detector._limit_bracket(terms, one, threshold, float(MAX_LIMIT)))
    surprise = lambda s: np.asarray(detector._surprise(s, terms, one))  # noqa: E731
    assert np.all((lo == 1) | (surprise(lo) < threshold))
    assert np.all((hi == MAX_LIMIT) | (surprise(hi) >= threshold))
    assert np.all((lo < hi) | (lo == MAX_LIMIT)) and np.median(np.log2(np.maximum(hi - lo, 1))) <= 4


def test_the_limit_ends_past_float32s_whole_numbers():
    # Past 2 ** 24 a float32 midpoint stops halving a bracket: the bisection stops after the whole range's steps.
    # It ends, and with the full range's limits (a strict calibration puts a sixth of them past 2 ** 24).
    model = _random_models(np.random.default_rng(0), 2000)._replace(kappa=np.full(2000, 10.0, np.float32))
    limit = np.asarray(jax.jit(kernels.silence_limit, static_argnames="max_limit")(model, P, max_limit=1 << 26))
    want = np.asarray(jax.jit(_full_range_limit, static_argnums=(1, 2))(model, P, 1 << 26)).astype(np.int64)
    assert np.sum(want > 1 << 24) > 100
    np.testing.assert_array_equal(limit, want)


# Blocks of 40 and 32 users x 4 interests (at least _ROWS rows, so the update splits them): 0, 40, 50 and 0, 32, 58.
@pytest.mark.parametrize("period_every, user_block", [(1, None), (4, None), (4, 40), (3, 32)])
def test_population_dispersion_counts_the_users_whose_turn_it_is(period_every, user_block):
    """Each window's ``dispersion_histogram`` counts the interests (4+ windows of history) of the users ``u`` with
    ``u % period_every == window % period_every``, each once, whatever the user blocks (the last one overlaps
    the one before): as many as the state after the window says there are (late starts make the number differ
    from turn to turn), and in the bins of their own indices but where float32 rounding decides."""
    rng = np.random.default_rng(3)
    users, interests = 90, 4
    counts = rng.poisson(rng.gamma(0.7, 2.0, (users, interests)), size=(16, users, interests)).astype(np.float32)
    counts[:, :, 0] *= rng.random((16, users)) < 0.5  # some sessions: indices above 1
    counts *= np.arange(16)[:, None, None] >= rng.integers(0, 12, (1, users, interests))  # late starts
    state = kernels.detector_init(users, interests, 8)
    update = jax.jit(lambda s, c: kernels.detector_update(s, c, None, P, user_block=user_block,
                                                          period_every=period_every, with_limits=False)[0])
    for t in range(16):
        state = update(state, counts[t])
        history = np.asarray(state.alive - state.silence)
        runs, steps = kernels.history_dispersion(state.total, state.sum_sq, state.sum_lag, history)
        turn = (np.arange(users) % period_every) == (t % period_every)
        exposure = np.where(turn[:, None], np.maximum(history - 1, 0), 0).astype(np.float32)
        want = np.asarray(kernels.dispersion_histogram(runs, steps, exposure))
        got = np.asarray(state.dispersion_histogram)
        np.testing.assert_array_equal(got.sum(-1), want.sum(-1), err_msg=f"window {t}")  # the same interests
        # In the same bins, but where the update's fused arithmetic rounds the variance's cancellation (sum x^2 -
        # n mean^2) to the other side of a bin's edge: a few interests at most.
        assert np.abs(got - want).sum() <= 2 * max(1, round(0.05 * want[0].sum())), f"window {t}"
    assert want.sum() > 0 and want[0, 1:].sum() > 0  # the check saw counted interests, some above 1
